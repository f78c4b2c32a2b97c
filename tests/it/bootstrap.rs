//! The `agentry` binary as an operator meets it: configuration checks, database creation and
//! migration, clear errors, the exported schema, and a served session whose logs hold no secret.

use crate::common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use common::{PASSWORD, TestApp, with_database};
use serde_json::{Value, json};

fn agentry() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentry"));
    // Start from a clean slate: the test process's own AGENTRY_* settings must not leak in.
    for (key, _) in std::env::vars() {
        if key.starts_with("AGENTRY_") {
            command.env_remove(key);
        }
    }
    command.env("AGENTRY_BCRYPT_COST", "4");
    command
}

fn base_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://localhost/agentry".into())
}

#[test]
fn schema_graphql_is_up_to_date() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .expect("schema.graphql at the repository root");
    let output = agentry()
        .arg("export-schema")
        .output()
        .expect("run export-schema");
    assert!(output.status.success());
    let exported = String::from_utf8(output.stdout).unwrap();
    assert!(
        committed == exported,
        "schema.graphql is stale: run `cargo run -- export-schema > schema.graphql`"
    );
    for name in [
        "register(",
        "login(",
        "refreshSession(",
        "logout(",
        "changePassword(",
        "updateProfile(",
        "me:",
        "users(",
        "user(",
        "auditLog(",
        "suspendUser(",
        "reactivateUser(",
        "setUserRole(",
    ] {
        assert!(exported.contains(name), "schema lacks {name}");
    }
}

#[test]
fn production_refuses_to_start_without_a_jwt_secret_and_names_it() {
    let output = agentry()
        .args(["migrate"])
        .env("AGENTRY_ENV", "production")
        .env("AGENTRY_BCRYPT_COST", "12")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("AGENTRY_JWT_SECRET is required in production"),
        "{stderr}"
    );

    let output = agentry()
        .args(["migrate"])
        .env("AGENTRY_ENV", "production")
        .env("AGENTRY_BCRYPT_COST", "12")
        .env("AGENTRY_JWT_SECRET", "too-short")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("AGENTRY_JWT_SECRET is invalid: must be at least 32 bytes"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_refuses_a_half_configured_oauth_provider_and_names_the_variable() {
    let app = TestApp::spawn().await;
    let output = agentry()
        .args(["serve"])
        .env("DATABASE_URL", &app.database_url)
        .env("AGENTRY_LISTEN", "127.0.0.1:0")
        .env(
            "AGENTRY_DATA_DIR",
            std::env::temp_dir().join("agentry-half-oauth"),
        )
        .env("AGENTRY_OAUTH_GOOGLE_CLIENT_ID", "only-the-id")
        .env("AGENTRY_OAUTH_REDIRECT_URIS", "https://app.example.com/cb")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("AGENTRY_OAUTH_GOOGLE_CLIENT_SECRET"),
        "{stderr}"
    );
}

#[test]
fn settings_out_of_range_stop_start_up_and_name_the_variable() {
    let output = agentry()
        .args(["migrate"])
        .env("AGENTRY_RATE_LIMIT_IPV6_PREFIX", "16")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("AGENTRY_RATE_LIMIT_IPV6_PREFIX"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_refuses_an_egress_allowlist_entry_it_cannot_read() {
    let app = TestApp::spawn().await;
    let output = agentry()
        .args(["serve"])
        .env("DATABASE_URL", &app.database_url)
        .env("AGENTRY_LISTEN", "127.0.0.1:0")
        .env(
            "AGENTRY_DATA_DIR",
            std::env::temp_dir().join("agentry-bad-egress"),
        )
        .env("AGENTRY_EGRESS_ALLOW", "10.0.0.0/8,not a host!")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AGENTRY_EGRESS_ALLOW"), "{stderr}");
}

#[test]
fn development_generates_a_secret_once_and_keeps_it() {
    let dir = std::env::temp_dir().join(format!("agentry-data-{}", uuid::Uuid::new_v4().simple()));
    let run = || {
        agentry()
            .args(["migrate"])
            .env("AGENTRY_DATA_DIR", &dir)
            .env(
                "DATABASE_URL",
                with_database(&base_url(), "agentry_bootstrap_dev"),
            )
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("AGENTRY_JWT_SECRET is not set"));
    let secret = std::fs::read_to_string(dir.join("jwt_secret")).expect("secret kept");
    assert!(secret.len() >= 32);
    let second = run();
    assert!(second.status.success());
    assert_eq!(
        std::fs::read_to_string(dir.join("jwt_secret")).unwrap(),
        secret
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn migrate_creates_a_missing_database() {
    let name = format!("agentry_created_{}", uuid::Uuid::new_v4().simple());
    let url = with_database(&base_url(), &name);
    let output = agentry()
        .args(["migrate"])
        .env("DATABASE_URL", &url)
        .env(
            "AGENTRY_JWT_SECRET",
            "a-secret-that-is-long-enough-0123456789",
        )
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("created");
    tokio::spawn(connection);
    let tables: i64 = client
        .query_one("SELECT count(*) FROM information_schema.tables WHERE table_name IN ('users', 'sessions', 'audit_log')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 3);
    drop(client);
    let (maintenance, connection) = tokio_postgres::connect(
        &with_database(&base_url(), "postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    maintenance
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
}

#[test]
fn an_unreachable_database_gets_an_error_that_says_what_to_do() {
    let output = agentry()
        .args(["migrate"])
        .env(
            "DATABASE_URL",
            "postgres://app:hunter2-secret@127.0.0.1:1/agentry",
        )
        .env(
            "AGENTRY_JWT_SECRET",
            "a-secret-that-is-long-enough-0123456789",
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("could not reach PostgreSQL at postgres://app:***@127.0.0.1:1/agentry"),
        "{stderr}"
    );
    assert!(
        stderr.contains("docker compose -f docker/compose.yml up -d db"),
        "{stderr}"
    );
    assert!(stderr.contains("DATABASE_URL"));
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
}

#[tokio::test]
async fn a_served_session_leaves_no_password_or_token_in_the_logs() {
    let name = format!("agentry_served_{}", uuid::Uuid::new_v4().simple());
    let url = with_database(&base_url(), &name);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = agentry()
        .args(["serve"])
        .env("DATABASE_URL", &url)
        .env("AGENTRY_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "AGENTRY_JWT_SECRET",
            "a-secret-that-is-long-enough-0123456789",
        )
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });

    let client = reqwest::Client::new();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("{endpoint}/readyz")).send().await {
            ready = r.status() == 200;
            if ready {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "server did not become ready");
    let post = |body: Value| {
        let client = client.clone();
        let endpoint = endpoint.clone();
        async move {
            client
                .post(format!("{endpoint}/graphql"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let registered = post(json!({"query": "mutation($p: String!) { register(input: {email: \"logs@example.com\", password: $p, displayName: \"L\"}) { accessToken refreshToken } }", "variables": {"p": PASSWORD}})).await;
    let access = registered["data"]["register"]["accessToken"]
        .as_str()
        .expect("registered")
        .to_owned();
    let refresh = registered["data"]["register"]["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    post(json!({"query": "mutation($t: String!) { refreshSession(refreshToken: $t) { accessToken } }", "variables": {"t": refresh}})).await;
    post(json!({"query": "mutation($t: String!) { refreshSession(refreshToken: $t) { accessToken } }", "variables": {"t": refresh}})).await;
    post(json!({"query": "mutation($p: String!) { login(email: \"logs@example.com\", password: $p) { accessToken } }", "variables": {"p": "wrong-but-secret-guess"}})).await;

    // SIGTERM: the server shuts down gracefully and exits 0.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let logs = reader.join().unwrap().join("\n");
    assert!(logs.contains("Agentry listening"), "{logs}");
    for secret in [
        PASSWORD,
        "wrong-but-secret-guess",
        access.as_str(),
        refresh.as_str(),
        "a-secret-that-is-long-enough",
    ] {
        assert!(
            !logs.contains(secret),
            "a secret reached the logs: {secret}"
        );
    }
    let (maintenance, connection) = tokio_postgres::connect(
        &with_database(&base_url(), "postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    maintenance
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
}
