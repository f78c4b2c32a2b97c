//! The `agentry` command: `serve` (default), `migrate`, `create-owner`, `export-schema`,
//! `healthcheck`, `backup`, `restore` and `rotate-encryption-key`.

use std::process::ExitCode;

use agentry::{
    api_keys, config::Config, db, error::AppError, http, oauth, schema, state::AppState, telemetry,
    users::admin,
};
use clap::{Parser, Subcommand};
use secrecy::SecretString;

/// mimalloc instead of the system allocator: a GraphQL response is a tree of small
/// allocations built and freed per request (and per subscriber per event), and the profiles
/// showed glibc's malloc/free and its consolidation at 15–25% of the CPU on list queries.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Agentry: a GraphQL API platform for AI agents.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database if missing, migrate, and serve HTTP + WebSocket GraphQL (default).
    Serve,
    /// Create the database if missing and run pending migrations, then exit.
    Migrate,
    /// Create an owner account (or promote an existing account with that email).
    CreateOwner {
        /// The owner's email.
        #[arg(long)]
        email: String,
        /// The owner's password (12–128 characters, hard to guess).
        #[arg(long, env = "AGENTRY_OWNER_PASSWORD", hide_env_values = true)]
        password: String,
        /// Name shown in the UI (defaults to the email's local part).
        #[arg(long)]
        display_name: Option<String>,
        /// Promote the account that already has this email (its password must be given; its
        /// sessions are signed out).
        #[arg(long)]
        promote_existing: bool,
    },
    /// Print the GraphQL schema (SDL), as committed in schema.graphql.
    ExportSchema,
    /// Exit 0 when the server at AGENTRY_LISTEN answers /healthz (the container's HEALTHCHECK).
    Healthcheck,
    /// Dump the database (pg_dump, compressed) with a manifest of row counts; keep the newest
    /// `--keep`; upload to S3-compatible storage when AGENTRY_BACKUP_S3_* is set.
    Backup(BackupArgs),
    /// Restore a backup into a new database on the same server and verify every table's rows.
    Restore {
        /// The `.dump` file (its `.dump.json` manifest must sit beside it).
        #[arg(long)]
        file: std::path::PathBuf,
        /// Name of the database to create and restore into.
        #[arg(long)]
        database: String,
    },
    /// Re-encrypt every stored secret with the first key of AGENTRY_ENCRYPTION_KEYS (safe to
    /// interrupt and re-run); afterwards the old keys can be removed from the list.
    RotateEncryptionKey,
}

/// Where `backup` writes and uploads.
#[derive(clap::Args)]
struct BackupArgs {
    /// Directory for backups.
    #[arg(long, env = "AGENTRY_BACKUP_DIR", default_value = "./backups")]
    dir: std::path::PathBuf,
    /// How many backups to keep.
    #[arg(long, env = "AGENTRY_BACKUP_KEEP", default_value_t = 7)]
    keep: usize,
    /// S3-compatible endpoint, e.g. https://s3.eu-west-1.amazonaws.com.
    #[arg(long, env = "AGENTRY_BACKUP_S3_ENDPOINT")]
    s3_endpoint: Option<url::Url>,
    /// Bucket.
    #[arg(long, env = "AGENTRY_BACKUP_S3_BUCKET")]
    s3_bucket: Option<String>,
    /// Region.
    #[arg(long, env = "AGENTRY_BACKUP_S3_REGION", default_value = "us-east-1")]
    s3_region: String,
    /// Access key id.
    #[arg(long, env = "AGENTRY_BACKUP_S3_ACCESS_KEY_ID")]
    s3_access_key_id: Option<String>,
    /// Secret access key.
    #[arg(
        long,
        env = "AGENTRY_BACKUP_S3_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    s3_secret_access_key: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = cli.config;
    let environment = if config.is_production() {
        "production"
    } else {
        "development"
    };
    let sentry = telemetry::sentry(config.sentry_dsn.as_ref(), environment);
    let otel = match telemetry::otel(&config) {
        Ok(provider) => provider,
        Err(err) => {
            eprintln!("error: OpenTelemetry export could not be set up: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    telemetry::init_with(
        &config.log_filter,
        config.is_production(),
        sentry.is_some(),
        otel.as_ref(),
    );
    let code = match run(cli.command.unwrap_or(Command::Serve), &mut config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Logged (and so reported to Sentry when enabled) as well as printed.
            tracing::error!(error = %format!("{err:#}"), "agentry failed");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    };
    drop(sentry); // flushes pending error reports
    if let Some(provider) = otel {
        // Sends the spans still batched; blocking, so off the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
    code
}

/// Runs one command. The offline ones (schema, health check, backup, restore) need no
/// application secrets; the rest validate the configuration and bring the database up first.
async fn run(command: Command, config: &mut Config) -> anyhow::Result<()> {
    match command {
        Command::ExportSchema => {
            print!("{}", schema::export_sdl(config));
            Ok(())
        }
        Command::Healthcheck => healthcheck(config).await,
        Command::Backup(args) => backup(config, args).await,
        Command::Restore { file, database } => restore(config, &file, &database).await,
        Command::Migrate => {
            prepare(config).await?;
            println!(
                "database {} is up to date",
                db::redact_url(&config.database_url)
            );
            Ok(())
        }
        Command::CreateOwner {
            email,
            password,
            display_name,
            promote_existing,
        } => {
            prepare(config).await?;
            let password = SecretString::from(password);
            create_owner(config, &email, password, display_name, promote_existing).await
        }
        Command::Serve => {
            prepare(config).await?;
            let state = AppState::new(config.clone())?;
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            tracing::info!(
                address = %listener.local_addr()?,
                graphiql = config.graphiql_enabled(),
                "Agentry listening: GraphQL at /graphql"
            );
            http::serve(state, listener, http::shutdown_signal()).await
        }
        Command::RotateEncryptionKey => {
            prepare(config).await?;
            rotate_encryption_key(config).await
        }
    }
}

/// What every command that runs the application needs first: a valid configuration, and the
/// database created if missing and migrated.
async fn prepare(config: &mut Config) -> anyhow::Result<()> {
    config.validate()?;
    db::bootstrap(&config.database_url).await
}

/// `healthcheck`: whether the server at the listen address answers `/healthz`.
async fn healthcheck(config: &Config) -> anyhow::Result<()> {
    // A wildcard listen address is reached through loopback.
    let mut address = config.listen;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()?
        .get(format!("http://{address}/healthz"))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "healthz answered {}",
        response.status()
    );
    println!("ok");
    Ok(())
}

/// `backup`: dumps the database, keeps the newest, uploads when S3 is set, and says what it did.
async fn backup(config: &Config, args: BackupArgs) -> anyhow::Result<()> {
    let s3 = match (args.s3_endpoint, args.s3_bucket) {
        (Some(endpoint), Some(bucket)) => Some(db::backup::S3Target {
            endpoint,
            bucket,
            region: args.s3_region,
            access_key: args.s3_access_key_id.unwrap_or_default(),
            secret_key: args.s3_secret_access_key.unwrap_or_default().into(),
        }),
        _ => None,
    };
    let http = reqwest::Client::new();
    let report = db::backup::backup(
        &config.database_url,
        &args.dir,
        args.keep,
        s3.as_ref(),
        &http,
    )
    .await?;
    println!("backup {} ({} bytes)", report.file.display(), report.bytes);
    for (table, rows) in &report.manifest.tables {
        println!("  {table}: {rows} rows");
    }
    if let Some(url) = report.uploaded {
        println!("uploaded to {url}");
    }
    for old in report.removed {
        println!("removed old backup {}", old.display());
    }
    Ok(())
}

/// `restore`: restores a backup into a new database and checks every table's row count
/// against the backup's manifest.
async fn restore(config: &Config, file: &std::path::Path, database: &str) -> anyhow::Result<()> {
    let checks = db::backup::restore(&config.database_url, file, database).await?;
    let mut ok = true;
    for check in &checks {
        let same = check.restored == Some(check.expected);
        ok &= same;
        println!(
            "  {}: {} rows expected, {} restored {}",
            check.table,
            check.expected,
            check.restored.map_or("none".into(), |n| n.to_string()),
            if same { "✓" } else { "✗ MISMATCH" }
        );
    }
    if !ok {
        anyhow::bail!("restored database {database} does not match the backup's manifest");
    }
    println!(
        "restored {} into database {database}: every table verified",
        file.display()
    );
    Ok(())
}

/// `create-owner`: creates the owner account, or promotes an existing one given its password.
async fn create_owner(
    config: &Config,
    email: &str,
    password: SecretString,
    display_name: Option<String>,
    promote_existing: bool,
) -> anyhow::Result<()> {
    let state = AppState::new(config.clone())?;
    let (user, created) = admin::create_owner(
        &state,
        email,
        password,
        display_name.as_deref(),
        promote_existing,
    )
    .await
    .map_err(|e| match e {
        // The operator sees the cause, not the API's opaque message.
        AppError::Internal(cause) => cause,
        other => anyhow::anyhow!(other.message()),
    })?;
    let verb = if created {
        "created owner"
    } else {
        "promoted to owner"
    };
    println!("{verb} {} ({})", user.email, user.id);
    Ok(())
}

/// `rotate-encryption-key`: re-encrypts every stored secret under the active key.
async fn rotate_encryption_key(config: &Config) -> anyhow::Result<()> {
    let state = AppState::new(config.clone())?;
    let mut conn = state.pool.get().await?;
    let keys = api_keys::service::rewrap_all(&mut conn, &state.vault, 100).await?;
    let oauth = oauth::accounts::rewrap_all(&mut conn, &state.vault, 100).await?;
    let hooks = agentry::webhooks::service::rewrap_all(&mut conn, &state.vault, 100).await?;
    println!(
        "rewrapped {} secrets ({keys} api_keys, {oauth} oauth_accounts/oauth_states, {hooks} webhooks) under key `{}`",
        keys + oauth + hooks,
        state.vault.active_key_id()
    );
    Ok(())
}
