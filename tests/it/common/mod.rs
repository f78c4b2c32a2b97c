//! Test harness: a real Agentry server on port 0 over its own PostgreSQL database, created from a
//! migrated template and dropped afterwards, plus HTTP and WebSocket client helpers.
#![allow(dead_code)]
pub mod db_proxy;
pub mod fake_provider;
pub mod node;

use std::{net::SocketAddr, time::Duration};

use agentry::{config::Config, http as server, state::AppState};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, protocol::Message};

/// A strong password every test user gets unless a test says otherwise.
pub const PASSWORD: &str = "violet-harbor-canoe-92";
/// The vault key of test servers (32 bytes, base64).
pub const TEST_ENCRYPTION_KEYS: &str = "test1:dGVzdC1rZXktdGVzdC1rZXktdGVzdC1rZXktMDAwMSE=";
/// The browser origin the test servers allow.
pub const ALLOWED_ORIGIN: &str = "http://app.example.test";

#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    config: Config,
}

/// The PostgreSQL server tests use: `DATABASE_URL` (any database on it), else the local default.
fn base_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://localhost/agentry".into())
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (without_query, query) = match url.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (url, None),
    };
    let scheme_end = without_query.find("://").map_or(0, |i| i + 3);
    let base = match without_query[scheme_end..].find('/') {
        Some(slash) => &without_query[..scheme_end + slash],
        None => without_query,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

async fn maintenance() -> tokio_postgres::Client {
    let url = with_database(&base_url(), "postgres");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("tests need PostgreSQL at {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// Name of the migrated template for the current migrations (a new migration, a new template).
fn template_name() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = walk(&dir);
    files.sort();
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update(std::fs::read(&file).expect("read migration"));
    }
    format!("agentry_tpl_{}", &hex::encode(hasher.finalize())[..12])
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("migrations dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Creates a fresh database from the migrated template and returns its name.
async fn create_test_database() -> String {
    let client = maintenance().await;
    let template = template_name();
    client
        .execute("SELECT pg_advisory_lock(7220431)", &[])
        .await
        .expect("advisory lock");
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
        .await
        .expect("look up template")
        .is_some();
    if !exists {
        let building = format!("{template}_building");
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
            .await
            .expect("drop half-built template");
        client
            .batch_execute(&format!("CREATE DATABASE {building}"))
            .await
            .expect("create template");
        agentry::db::migrate(&with_database(&base_url(), &building))
            .await
            .expect("migrate template");
        client
            .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {template}"))
            .await
            .expect("publish template");
    }
    client
        .execute("SELECT pg_advisory_unlock(7220431)", &[])
        .await
        .expect("advisory unlock");
    let name = format!("agentry_test_{}", uuid::Uuid::new_v4().simple());
    let mut attempt = 0;
    loop {
        match client
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .await
        {
            Ok(()) => break,
            // Another test copying the same template at this instant: try again shortly.
            Err(e) if attempt < 20 => {
                attempt += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => panic!("create test database: {e}"),
        }
    }
    name
}

/// A running server and its database.
pub struct TestApp {
    /// Where the server listens.
    pub addr: SocketAddr,
    /// The server's state (pool, config, limiters) for direct checks.
    pub state: AppState,
    /// The test database's URL.
    pub database_url: String,
    /// HTTP client.
    pub http: reqwest::Client,
    db_name: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The configuration tests start from: a fast bcrypt, a fixed secret, generous rate limits.
pub fn test_config(database_url: &str) -> Config {
    let mut config = TestCli::parse_from(["agentry-test"]).config;
    config.database_url = database_url.to_owned();
    config.bcrypt_cost = 4;
    config.jwt_secret = Some("test-secret-test-secret-test-secret-0123".to_owned().into());
    config.encryption_keys = Some(TEST_ENCRYPTION_KEYS.to_owned().into());
    config.provider_timeout_secs = 2;
    config.cors_origins = vec![ALLOWED_ORIGIN.to_owned()];
    config.rate_limit_per_second = 1000;
    config.rate_limit_burst = 1000;
    config.auth_rate_limit_per_minute = 1000;
    config.db_pool_size = 4;
    config.data_dir = std::env::temp_dir().join("agentry-test-data");
    config.log_filter = "warn".into();
    // Tests change users and sessions with SQL behind the server's back and expect the next
    // request to see it; in production the database's triggers announce such changes within
    // moments, but a test's next request may come first. The cache has its own tests
    // (`auth::session_cache`), which turn it on.
    config.session_cache_ms = 0;
    config
}

impl TestApp {
    /// A server with the default test configuration.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A server whose test configuration `adjust` changes first.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let db_name = create_test_database().await;
        let database_url = with_database(&base_url(), &db_name);
        let mut config = test_config(&database_url);
        adjust(&mut config);
        Self::start(config, db_name).await
    }

    /// A second server on the same database (as behind a load balancer).
    pub async fn sibling(&self) -> Self {
        let config = (*self.state.config).clone();
        let mut app = Self::start(config, String::new()).await;
        app.db_name = String::new();
        app
    }

    /// A second server on the same database whose configuration `adjust` changes first (e.g.
    /// to reach the database through a [`db_proxy::DbProxy`]).
    pub async fn sibling_with(&self, adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = (*self.state.config).clone();
        adjust(&mut config);
        Self::start(config, String::new()).await
    }

    async fn start(mut config: Config, db_name: String) -> Self {
        agentry::telemetry::init(&config.log_filter, false);
        config.validate().expect("valid test config");
        let database_url = config.database_url.clone();
        let state = AppState::new(config).expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(server::serve(state.clone(), listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            state,
            database_url,
            http: reqwest::Client::new(),
            db_name,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    /// `http://addr/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs a GraphQL request; returns the HTTP response.
    pub async fn post(&self, token: Option<&str>, body: &Value) -> reqwest::Response {
        let mut request = self.http.post(self.url("/graphql")).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("POST /graphql")
    }

    /// Runs a query anonymously; returns the JSON body.
    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        self.gql_as(None, query, variables).await
    }

    /// Runs a query with an access token; returns the JSON body.
    pub async fn gql_as(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        self.post(token, &json!({ "query": query, "variables": variables }))
            .await
            .json()
            .await
            .expect("JSON response")
    }

    /// Registers a user; returns its session.
    pub async fn register(&self, email: &str) -> Session {
        let body = self
            .gql(
                "mutation($input: RegisterInput!) { register(input: $input) {
                    accessToken refreshToken user { id email role } } }",
                json!({ "input": { "email": email, "password": PASSWORD, "displayName": "Test User" } }),
            )
            .await;
        Session::from_payload(&body["data"]["register"])
            .unwrap_or_else(|| panic!("register failed: {body}"))
    }

    /// Signs in; returns the session.
    pub async fn login(&self, email: &str, password: &str) -> Session {
        let body = self
            .gql(
                "mutation($e: String!, $p: String!) { login(email: $e, password: $p) {
                    accessToken refreshToken user { id email role } } }",
                json!({ "e": email, "p": password }),
            )
            .await;
        Session::from_payload(&body["data"]["login"])
            .unwrap_or_else(|| panic!("login failed: {body}"))
    }

    /// Registers a user and gives it `role` directly in the database.
    pub async fn user_with_role(&self, email: &str, role: &str) -> Session {
        let session = self.register(email).await;
        self.sql(&format!(
            "UPDATE users SET role = '{role}' WHERE id = '{}'",
            session.user_id
        ))
        .await;
        session
    }

    /// A direct connection to the test database, for checks a client cannot make.
    pub async fn db(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
                .await
                .expect("connect to test database");
        tokio::spawn(connection);
        client
    }

    /// Runs SQL on the test database.
    pub async fn sql(&self, statement: &str) {
        self.db().await.batch_execute(statement).await.expect("SQL");
    }

    /// Counts rows matching a query like `SELECT count(*) FROM …`.
    pub async fn count(&self, query: &str) -> i64 {
        self.db()
            .await
            .query_one(query, &[])
            .await
            .expect("count")
            .get(0)
    }

    /// Opens a WebSocket on /graphql with `protocol` and optional Origin.
    pub async fn ws(&self, protocol: &str, origin: Option<&str>) -> Result<Ws, tungstenite::Error> {
        let mut request = format!("ws://{}/graphql", self.addr).into_client_request()?;
        request.headers_mut().insert(
            "sec-websocket-protocol",
            protocol.parse().expect("protocol header"),
        );
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().expect("origin header"));
        }
        let (socket, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Ws { socket })
    }

    /// Stops the server (in-flight requests finish).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if self.db_name.is_empty() {
            return;
        }
        let name = std::mem::take(&mut self.db_name);
        // Drop on a separate runtime: Drop cannot await, and the test's runtime may be ending.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let client = maintenance().await;
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}

/// Tokens and id of a signed-in test user.
#[derive(Debug, Clone)]
pub struct Session {
    /// Bearer token.
    pub access: String,
    /// Refresh token.
    pub refresh: String,
    /// User id.
    pub user_id: String,
}

impl Session {
    /// Reads an `AuthPayload` JSON object.
    pub fn from_payload(payload: &Value) -> Option<Self> {
        Some(Self {
            access: payload["accessToken"].as_str()?.to_owned(),
            refresh: payload["refreshToken"].as_str()?.to_owned(),
            user_id: payload["user"]["id"].as_str()?.to_owned(),
        })
    }
}

/// The `id` at `data.<path>` of a GraphQL response, e.g. `id_at(&body, &["createAgent"])`;
/// panics with the whole response when it is not there, so a failed call explains itself.
#[track_caller]
pub fn id_at(body: &Value, path: &[&str]) -> String {
    let node = path.iter().fold(&body["data"], |node, key| &node[*key]);
    match node["id"].as_str() {
        Some(id) => id.to_owned(),
        None => panic!("no id at data.{}: {body}", path.join(".")),
    }
}

/// The `extensions.code` of the first error.
pub fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("<no code>")
}

/// The `extensions.field` of the first error.
pub fn field(body: &Value) -> &str {
    body["errors"][0]["extensions"]["field"]
        .as_str()
        .unwrap_or("<no field>")
}

/// A test WebSocket client speaking JSON messages.
pub struct Ws {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// What the server did next on a WebSocket.
#[derive(Debug)]
pub enum WsEvent {
    /// A JSON message.
    Json(Value),
    /// A close frame with its code and reason.
    Closed(u16, String),
    /// The connection ended without a close frame.
    Ended,
}

impl Ws {
    /// Sends a JSON message.
    pub async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("send");
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: String) {
        let _ = self.socket.send(Message::Text(text.into())).await;
    }

    /// Waits up to `secs` for the next message or close.
    pub async fn next(&mut self, secs: u64) -> WsEvent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("nothing from the server within {secs} s"));
            return match message {
                Some(Ok(Message::Text(text))) => {
                    WsEvent::Json(serde_json::from_str(&text).expect("JSON"))
                }
                Some(Ok(Message::Close(frame))) => match frame {
                    Some(frame) => WsEvent::Closed(frame.code.into(), frame.reason.to_string()),
                    None => WsEvent::Closed(1005, String::new()),
                },
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => WsEvent::Ended,
            };
        }
    }

    /// The next text message as the server wrote it, byte for byte (waits up to `secs`).
    pub async fn next_text(&mut self, secs: u64) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("nothing from the server within {secs} s"));
            match message {
                Some(Ok(Message::Text(text))) => return text.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// Sends `connection_init` with `payload` and returns the answer.
    pub async fn init(&mut self, payload: Value) -> WsEvent {
        self.send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        self.next(5).await
    }
}
