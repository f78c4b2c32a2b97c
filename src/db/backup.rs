//! Backups: a compressed `pg_dump` (custom format) with a manifest of row counts taken from the
//! very snapshot the dump reads, a retention policy, optional upload to S3-compatible storage,
//! and a restore into a named database that verifies every table's row count.
//!
//! Encrypted columns are dumped as they are stored: a backup holds no plaintext secret, and a
//! restored database needs the same `AGENTRY_ENCRYPTION_KEYS` to use them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// File names start with this; retention only ever touches such files.
const PREFIX: &str = "agentry-";
/// Dump file suffix.
const DUMP_SUFFIX: &str = ".dump";

/// What a backup records beside the dump.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// When the snapshot was taken (RFC 3339).
    pub created_at: String,
    /// The agentry version that took it.
    pub agentry_version: String,
    /// Row count of every table in the dump, from the dump's own snapshot.
    pub tables: BTreeMap<String, i64>,
}

/// Where to upload backups (S3 or any S3-compatible store, path-style addressing).
#[derive(Debug, Clone)]
pub struct S3Target {
    /// e.g. `https://s3.eu-west-1.amazonaws.com` or `http://127.0.0.1:9000`.
    pub endpoint: url::Url,
    /// Bucket name.
    pub bucket: String,
    /// Region, e.g. `us-east-1`.
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: secrecy::SecretString,
}

/// The outcome of a backup.
#[derive(Debug)]
pub struct BackupReport {
    /// The dump file.
    pub file: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// The manifest written beside it.
    pub manifest: Manifest,
    /// Where it was uploaded, if anywhere.
    pub uploaded: Option<String>,
    /// Old backups removed by the retention policy.
    pub removed: Vec<PathBuf>,
}

/// Path of the manifest of a dump.
pub fn manifest_path(dump: &Path) -> PathBuf {
    let mut name = dump.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("could not connect to {}", super::redact_url(url)))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Row counts of every table in the `public` schema, as `client` sees them.
async fn count_rows(client: &tokio_postgres::Client) -> anyhow::Result<BTreeMap<String, i64>> {
    let tables = client
        .query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
            &[],
        )
        .await?;
    let mut counts = BTreeMap::new();
    for row in tables {
        let table: String = row.get(0);
        let quoted = format!("\"{}\"", table.replace('"', "\"\""));
        let count: i64 = client
            .query_one(&format!("SELECT count(*) FROM public.{quoted}"), &[])
            .await?
            .get(0);
        counts.insert(table, count);
    }
    Ok(counts)
}

/// Dumps the database at `database_url` into `dir` (created if missing), keeps the newest
/// `keep` backups there, and uploads the new one when `s3` is given.
pub async fn backup(
    database_url: &str,
    dir: &Path,
    keep: usize,
    s3: Option<&S3Target>,
    http: &reqwest::Client,
) -> anyhow::Result<BackupReport> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let now = chrono::Utc::now();
    let file = dir.join(format!(
        "{PREFIX}{}{DUMP_SUFFIX}",
        now.format("%Y%m%dT%H%M%S%.3fZ")
    ));
    // The dump holds every user's data: readable by the owner only, from its first byte
    // (pg_dump writes into the file created here and keeps its mode).
    owner_only(&file)?;

    // One snapshot for the counts and the dump: the manifest describes exactly what was dumped.
    let client = connect(database_url).await?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?;
    let snapshot: String = client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await?
        .get(0);
    let tables = count_rows(&client).await?;
    let (dump_url, password) = split_password(database_url);
    let mut command = tokio::process::Command::new("pg_dump");
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let output = command
        .arg("--format=custom")
        .arg("--compress=6")
        .arg("--no-owner")
        .arg(format!("--snapshot={snapshot}"))
        .arg(format!("--file={}", file.display()))
        .arg(format!("--dbname={dump_url}"))
        .output()
        .await
        .context("could not run pg_dump: install the PostgreSQL client tools")?;
    client.batch_execute("COMMIT").await?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&file);
        bail!(
            "pg_dump failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let manifest = Manifest {
        created_at: now.to_rfc3339(),
        agentry_version: env!("CARGO_PKG_VERSION").to_owned(),
        tables,
    };
    owner_only(&manifest_path(&file))?;
    std::fs::write(manifest_path(&file), serde_json::to_vec_pretty(&manifest)?)?;
    let bytes = std::fs::metadata(&file)?.len();
    let uploaded = match s3 {
        Some(target) => Some(upload(http, target, &file).await?),
        None => None,
    };
    let removed = prune(dir, keep)?;
    Ok(BackupReport {
        file,
        bytes,
        manifest,
        uploaded,
        removed,
    })
}

/// Removes all but the newest `keep` backups (and their manifests) in `dir`.
pub fn prune(dir: &Path, keep: usize) -> anyhow::Result<Vec<PathBuf>> {
    let mut dumps: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(DUMP_SUFFIX))
        })
        .collect();
    // Timestamped names sort in time order.
    dumps.sort();
    let excess = dumps.len().saturating_sub(keep.max(1));
    let mut removed = Vec::new();
    for old in dumps.into_iter().take(excess) {
        std::fs::remove_file(&old)?;
        let _ = std::fs::remove_file(manifest_path(&old));
        removed.push(old);
    }
    Ok(removed)
}

/// Uploads a dump and its manifest with presigned PUTs; returns the dump's object URL.
async fn upload(http: &reqwest::Client, target: &S3Target, file: &Path) -> anyhow::Result<String> {
    use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
    use secrecy::ExposeSecret;
    let bucket = Bucket::new(
        target.endpoint.clone(),
        UrlStyle::Path,
        target.bucket.clone(),
        target.region.clone(),
    )
    .context("invalid S3 bucket settings")?;
    let credentials = Credentials::new(
        target.access_key.clone(),
        target.secret_key.expose_secret().to_owned(),
    );
    let mut dump_url = String::new();
    for path in [file.to_path_buf(), manifest_path(file)] {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("backup file has no name")?
            .to_owned();
        let body = tokio::fs::read(&path).await?;
        let url = bucket
            .put_object(Some(&credentials), &name)
            .sign(Duration::from_secs(600));
        let response = http
            .put(url.clone())
            .body(body)
            .send()
            .await
            .context("S3 upload failed")?;
        if !response.status().is_success() {
            bail!("S3 upload of {name} failed: HTTP {}", response.status());
        }
        if dump_url.is_empty() {
            let mut shown = url;
            shown.set_query(None);
            dump_url = shown.to_string();
        }
    }
    Ok(dump_url)
}

/// A table's expected and restored row counts.
#[derive(Debug)]
pub struct TableCheck {
    /// Table name.
    pub table: String,
    /// Count in the manifest.
    pub expected: i64,
    /// Count in the restored database (`None`: table missing).
    pub restored: Option<i64>,
}

/// Restores `dump` into a new database `name` on the server of `server_url`, then compares
/// every table's row count with the manifest. The database must not exist yet.
pub async fn restore(server_url: &str, dump: &Path, name: &str) -> anyhow::Result<Vec<TableCheck>> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        bail!("--database must be letters, digits and underscores");
    }
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(manifest_path(dump))
            .with_context(|| format!("no manifest beside {}", dump.display()))?,
    )
    .context("the manifest is not valid JSON")?;
    let mut maintenance: tokio_postgres::Config = server_url.parse()?;
    maintenance.dbname("postgres");
    let (admin, connection) = maintenance.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .with_context(|| format!("could not create database {name} (does it exist already?)"))?;
    let target_url = with_database(server_url, name);
    let (restore_url, password) = split_password(&target_url);
    let mut command = tokio::process::Command::new("pg_restore");
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let output = command
        .arg("--no-owner")
        .arg("--exit-on-error")
        .arg(format!("--dbname={restore_url}"))
        .arg(dump)
        .output()
        .await
        .context("could not run pg_restore: install the PostgreSQL client tools")?;
    if !output.status.success() {
        bail!(
            "pg_restore failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let restored = count_rows(&connect(&target_url).await?).await?;
    Ok(manifest
        .tables
        .into_iter()
        .map(|(table, expected)| TableCheck {
            restored: restored.get(&table).copied(),
            table,
            expected,
        })
        .collect())
}

/// `url` pointing at database `name` (URL form), or with `dbname=` replaced (key=value form).
fn with_database(url: &str, name: &str) -> String {
    if let Ok(mut parsed) = url::Url::parse(url)
        && matches!(parsed.scheme(), "postgres" | "postgresql")
    {
        parsed.set_path(&format!("/{name}"));
        return parsed.to_string();
    }
    format!("{url} dbname={name}")
}

/// The URL without its password (which goes to `PGPASSWORD` instead: a command line is visible
/// to every user of the machine).
fn split_password(url: &str) -> (String, Option<String>) {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let password = parsed.password().map(percent_decode);
            let _ = parsed.set_password(None);
            (parsed.to_string(), password)
        }
        _ => (url.to_owned(), None),
    }
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| text.to_owned())
}

/// Creates `path` empty (or truncates it) with mode 0600.
fn owner_only(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // An existing file keeps its old mode on open: set it.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
