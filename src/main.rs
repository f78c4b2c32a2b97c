//! The `agentry` command: `serve` (default), `migrate`, `create-owner`, `export-schema`.

use std::process::ExitCode;

use agentry::{
    api_keys, config::Config, db, graphql, oauth, server, state::AppState, telemetry, users::admin,
};
use clap::{Parser, Subcommand};
use secrecy::SecretString;

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
    },
    /// Print the GraphQL schema (SDL), as committed in schema.graphql.
    ExportSchema,
    /// Re-encrypt every stored secret with the first key of AGENTRY_ENCRYPTION_KEYS (safe to
    /// interrupt and re-run); afterwards the old keys can be removed from the list.
    RotateEncryptionKey,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = cli.config;
    telemetry::init(&config.log_filter, config.is_production());
    match run(cli.command.unwrap_or(Command::Serve), &mut config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: &mut Config) -> anyhow::Result<()> {
    if let Command::ExportSchema = command {
        print!("{}", graphql::export_sdl(config));
        return Ok(());
    }
    config.validate()?;
    db::bootstrap(&config.database_url).await?;
    match command {
        Command::Migrate => {
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
        } => {
            let state = AppState::new(config.clone())?;
            let (user, created) = admin::create_owner(
                &state,
                &email,
                SecretString::from(password),
                display_name.as_deref(),
            )
            .await
            .map_err(|e| anyhow::anyhow!(e.message()))?;
            let verb = if created {
                "created owner"
            } else {
                "promoted to owner"
            };
            println!("{verb} {} ({})", user.email, user.id);
            Ok(())
        }
        Command::Serve => {
            let state = AppState::new(config.clone())?;
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            tracing::info!(
                address = %listener.local_addr()?,
                graphiql = config.graphiql_enabled(),
                "Agentry listening: GraphQL at /graphql"
            );
            server::serve(state, listener, server::shutdown_signal()).await
        }
        Command::RotateEncryptionKey => {
            let state = AppState::new(config.clone())?;
            let mut conn = state.pool.get().await?;
            let keys = api_keys::service::rewrap_all(&mut conn, &state.vault, 100).await?;
            let oauth = oauth::service::rewrap_all(&mut conn, &state.vault, 100).await?;
            println!(
                "rewrapped {} secrets ({keys} api_keys, {oauth} oauth_accounts/oauth_states) under key `{}`",
                keys + oauth,
                state.vault.active_key_id()
            );
            Ok(())
        }
        Command::ExportSchema => Ok(()),
    }
}
