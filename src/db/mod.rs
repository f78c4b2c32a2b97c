//! The database: connection pool, bootstrap (create the database if missing) and migrations.

pub mod backup;
pub mod reusable;
pub mod schema;
pub mod shared;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use diesel_async::{
    AsyncPgConnection, RunQueryDsl,
    async_connection_wrapper::AsyncConnectionWrapper,
    pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod, deadpool},
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

diesel::define_sql_function! {
    /// SQL `octet_length(text)`: bytes of a text, without reading it out.
    fn octet_length(x: diesel::sql_types::Text) -> diesel::sql_types::Integer;
}

diesel::define_sql_function! {
    /// SQL `lower(text)`, as used by the case-insensitive unique indexes on names.
    fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// Declares the owner-scoped queries of a table whose rows belong to a user (`id`, `user_id`),
/// so each is written once: `find_owned` always; with `named`, `name_taken` (the
/// case-insensitive name check behind the unique index); with `activatable`, `set_active_owned`
/// (turns `is_active` on or off and stamps `updated_at`). Each returns nothing for another
/// user's row, which the services turn into `NOT_FOUND`.
#[macro_export]
macro_rules! owned_queries {
    ($table:ident, $row:ty $(, $extra:ident)* $(,)?) => {
        /// The owner's row `id`, if it exists and is theirs.
        pub async fn find_owned(
            conn: &mut diesel_async::AsyncPgConnection,
            user_id: uuid::Uuid,
            id: uuid::Uuid,
        ) -> diesel::QueryResult<Option<$row>> {
            use diesel::prelude::*;
            use diesel_async::RunQueryDsl;
            use $crate::db::schema::$table;
            $table::table
                .filter($table::id.eq(id))
                .filter($table::user_id.eq(user_id))
                .select(<$row>::as_select())
                .first(conn)
                .await
                .optional()
        }
        $( $crate::owned_queries!(@$extra $table, $row); )*
    };
    (@named $table:ident, $row:ty) => {
        /// Whether `user_id` has another row called `name` (case-insensitively), `except` aside.
        pub async fn name_taken(
            conn: &mut diesel_async::AsyncPgConnection,
            user_id: uuid::Uuid,
            name: &str,
            except: Option<uuid::Uuid>,
        ) -> diesel::QueryResult<bool> {
            use diesel::prelude::*;
            use diesel_async::RunQueryDsl;
            use $crate::db::{lower, schema::$table};
            let mut query = $table::table
                .filter($table::user_id.eq(user_id))
                .filter(lower($table::name).eq(lower(name)))
                .into_boxed();
            if let Some(except) = except {
                query = query.filter($table::id.ne(except));
            }
            diesel::select(diesel::dsl::exists(query))
                .get_result(conn)
                .await
        }
    };
    (@activatable $table:ident, $row:ty) => {
        /// Turns the owner's row on or off; `None` when it is not theirs.
        pub async fn set_active_owned(
            conn: &mut diesel_async::AsyncPgConnection,
            user_id: uuid::Uuid,
            id: uuid::Uuid,
            active: bool,
        ) -> diesel::QueryResult<Option<$row>> {
            use diesel::prelude::*;
            use diesel_async::RunQueryDsl;
            use $crate::db::schema::$table;
            diesel::update($table::table.find(id))
                .filter($table::user_id.eq(user_id))
                .set((
                    $table::is_active.eq(active),
                    $table::updated_at.eq(diesel::dsl::now),
                ))
                .returning(<$row>::as_returning())
                .get_result(conn)
                .await
                .optional()
        }
    };
}

/// Declares a domain enum stored as its SCREAMING_SNAKE_CASE name in a `text` column (the
/// names the migrations' CHECK constraints and the GraphQL enums use): the enum with its derives
/// (GraphQL enum, diesel text conversions, and an order that is the declaration order), each
/// variant written once next to its stored name, plus `as_str` and `from_name`.
#[macro_export]
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $ty:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $name:literal ),+ $(,)?
        }
    ) => {
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            PartialOrd,
            Ord,
            Hash,
            async_graphql::Enum,
            diesel::AsExpression,
            diesel::FromSqlRow,
        )]
        #[diesel(sql_type = diesel::sql_types::Text)]
        $(#[$meta])*
        $vis enum $ty {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $ty {
            /// The stored (and GraphQL) name.
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }
            /// The variant stored as `name`, if any.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($name => Some(Self::$variant),)+ _ => None }
            }
        }
        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $ty {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                use std::io::Write as _;
                out.write_all(self.as_str().as_bytes())?;
                Ok(diesel::serialize::IsNull::No)
            }
        }
        impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for $ty {
            fn from_sql(
                bytes: <diesel::pg::Pg as diesel::backend::Backend>::RawValue<'_>,
            ) -> diesel::deserialize::Result<Self> {
                let name = std::str::from_utf8(bytes.as_bytes())?;
                Self::from_name(name).ok_or_else(|| {
                    format!(concat!("unknown ", stringify!($ty), " `{}`"), name).into()
                })
            }
        }
    };
}

/// Walks a table in id order, `batch` rows at a time: `page(conn, after, batch)` reads the rows
/// after the cursor, `row_id` gives a row's id (the next cursor), and `each(conn, row)` handles
/// one row, answering whether it changed it. Returns how many rows changed. (The vault's key
/// rotation walks every table holding secrets this way.)
pub async fn for_each_row<R>(
    conn: &mut AsyncPgConnection,
    batch: i64,
    mut page: impl AsyncFnMut(
        &mut AsyncPgConnection,
        Option<uuid::Uuid>,
        i64,
    ) -> diesel::QueryResult<Vec<R>>,
    row_id: fn(&R) -> uuid::Uuid,
    mut each: impl AsyncFnMut(&mut AsyncPgConnection, R) -> anyhow::Result<bool>,
) -> anyhow::Result<u64> {
    let mut after = None;
    let mut changed = 0;
    loop {
        let rows = page(conn, after, batch).await?;
        let Some(last) = rows.last() else {
            return Ok(changed);
        };
        after = Some(row_id(last));
        for row in rows {
            if each(conn, row).await? {
                changed += 1;
            }
        }
    }
}

/// The pool every request borrows connections from.
pub type Pool = deadpool::Pool<AsyncPgConnection>;
/// A connection borrowed from the pool.
pub type Conn = deadpool::Object<AsyncPgConnection>;

/// The SQL migrations under `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// How long a request waits for a pooled connection (or a new one) before failing.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// Counts the SQL statements a pool's connections run (read by tests and metrics to check that
/// the statements per request do not grow with list length).
#[derive(Debug, Clone, Default)]
pub struct QueryCounter(Arc<AtomicU64>);

impl QueryCounter {
    /// Statements started so far.
    pub fn get(&self) -> u64 {
        AtomicU64::load(&self.0, Ordering::Relaxed)
    }
}

/// A connection's instrumentation: counts its statements and, when traces are exported, opens a
/// `db.query` span for each (a child of whatever span is current: the request, the run), closed
/// when the statement finishes. The span carries the statement text, never bound values (they
/// may be secrets).
struct Statements {
    counter: QueryCounter,
    spans: bool,
    open: Option<tracing::Span>,
}

impl diesel::connection::Instrumentation for Statements {
    fn on_connection_event(&mut self, event: diesel::connection::InstrumentationEvent<'_>) {
        use diesel::connection::InstrumentationEvent;
        match event {
            InstrumentationEvent::StartQuery { query, .. } => {
                self.counter.0.fetch_add(1, Ordering::Relaxed);
                if !self.spans {
                    return;
                }
                let statement = query.to_string();
                let statement = statement
                    .split_once(" -- binds:")
                    .map_or(statement.as_str(), |(sql, _)| sql);
                self.open = Some(tracing::info_span!(
                    "db.query",
                    otel.kind = "client",
                    db.system.name = "postgresql",
                    db.query.text = %statement,
                ));
            }
            InstrumentationEvent::FinishQuery { .. } => self.open = None,
            _ => {}
        }
    }
}

/// Builds the pool. Connections are made lazily, so a pool exists even while PostgreSQL is down
/// and recovers by itself when it returns. Every connection reports its statements to `counter`
/// and, with `sql_spans`, opens a span per statement.
pub fn pool(
    database_url: &str,
    max_size: usize,
    counter: QueryCounter,
    sql_spans: bool,
) -> anyhow::Result<Pool> {
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    // No test query on every checkout (one round trip per borrowed connection); a connection
    // that broke is known as broken and replaced.
    manager_config.recycling_method = RecyclingMethod::Fast;
    manager_config.custom_setup = Box::new(move |url| {
        let counter = counter.clone();
        Box::pin(async move {
            use diesel_async::AsyncConnection as _;
            let mut conn = AsyncPgConnection::establish(url).await?;
            conn.set_instrumentation(Statements {
                counter,
                spans: sql_spans,
                open: None,
            });
            Ok(conn)
        })
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        database_url,
        manager_config,
    );
    deadpool::Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .runtime(::deadpool::Runtime::Tokio1)
        .build()
        .context("could not build the database pool")
}

/// Why a patient database operation gave up.
#[derive(Debug, thiserror::Error)]
pub enum PatientError {
    /// The statement failed for a reason waiting does not fix (a constraint, bad SQL).
    #[error("database query failed: {0}")]
    Query(diesel::result::Error),
    /// No connection could be had, or the database kept failing, for the whole patience.
    #[error("the database was unavailable for {0:?}")]
    Unavailable(Duration),
}

impl From<PatientError> for crate::error::AppError {
    fn from(err: PatientError) -> Self {
        Self::Internal(anyhow::Error::new(err))
    }
}

/// Lets one "waiting for the database" line through per second, process-wide.
static WAIT_LOG: LogThrottle = LogThrottle::new();

/// A once-a-second gate for log lines that many tasks would otherwise repeat.
pub struct LogThrottle(AtomicU64);

impl LogThrottle {
    /// A gate that lets the first line through.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Whether a line may be logged now (at most one per second).
    pub fn allow(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = AtomicU64::load(&self.0, Ordering::Relaxed);
        now > last
            && self
                .0
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl Default for LogThrottle {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a query error is the connection's fault (worth a retry on another connection).
fn is_transient(err: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match err {
        // diesel-async reports every error without an SQLSTATE — the socket closed, an I/O
        // error, a timeout — as `UnableToSendCommand`: the statement may or may not have run,
        // and every patient operation is written to be repeated safely.
        Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        ) => true,
        Error::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            // tokio-postgres reports a dropped socket or a server restart as plain text.
            let message = info.message().to_ascii_lowercase();
            [
                "connection",
                "closed",
                "terminating",
                "shutting down",
                "recovery mode",
            ]
            .iter()
            .any(|needle| message.contains(needle))
        }
        Error::BrokenTransactionManager => true,
        _ => false,
    }
}

/// Runs `op` on a pooled connection, and when the pool is exhausted or the database is away
/// (restart, network), waits and tries again on a fresh connection for up to `patience`
/// instead of failing. For long-lived work — a subscription, a runner's write — that must be
/// delayed by a busy pool, never ended by it. `op` must be safe to repeat: a single statement
/// or a transaction. Each wait is logged once, as one line.
pub async fn patient<T, F>(
    pool: &Pool,
    patience: Duration,
    what: &'static str,
    mut op: F,
) -> Result<T, PatientError>
where
    F: for<'c> FnMut(
        &'c mut AsyncPgConnection,
    ) -> futures_util::future::BoxFuture<'c, diesel::QueryResult<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    let mut backoff = Duration::from_millis(20);
    let mut warned = false;
    loop {
        let failure = match pool.get().await {
            Ok(mut conn) => match op(&mut conn).await {
                Ok(value) => return Ok(value),
                Err(e) if is_transient(&e) => {
                    // A broken connection must not go back to the pool.
                    let _ = ::deadpool::managed::Object::take(conn);
                    e.to_string()
                }
                Err(e) => return Err(PatientError::Query(e)),
            },
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() + backoff > deadline {
            tracing::warn!(what, error = %failure, "database unavailable: giving up");
            return Err(PatientError::Unavailable(patience));
        }
        if !warned {
            warned = true;
            // Many streams wait at once when the pool is busy: one line a second for all.
            if WAIT_LOG.allow() {
                tracing::warn!(what, error = %failure, "database busy or unavailable: waiting");
            }
        }
        metrics::counter!(crate::telemetry::names::DB_WAITS, "what" => what).increment(1);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// Whether the database answers a trivial query (used by `/readyz`).
pub async fn ping(pool: &Pool) -> bool {
    let check = async {
        let mut conn = pool.get().await.ok()?;
        diesel::sql_query("SELECT 1").execute(&mut conn).await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Some(_))
    )
}

/// Makes sure the database exists and is migrated: creates it through the maintenance database
/// when it is missing, then runs every pending embedded migration.
pub async fn bootstrap(database_url: &str) -> anyhow::Result<()> {
    create_database_if_missing(database_url).await?;
    migrate(database_url).await
}

/// Runs the pending embedded migrations on the database at `database_url`.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let url = database_url.to_owned();
    // diesel_migrations is synchronous: run it on the blocking pool over the async connection.
    let applied = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        use diesel::Connection;
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)
            .context("could not connect to run migrations")?;
        // Several instances starting together (replicas, a migration Job beside them) take
        // turns: the first migrates, the others then find nothing pending. The lock is the
        // session's and goes with the connection.
        #[derive(diesel::QueryableByName)]
        struct Locked {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            locked: bool,
        }
        let first: Locked = diesel::RunQueryDsl::get_result(
            diesel::sql_query("SELECT pg_try_advisory_lock(7220432) AS locked"),
            &mut conn,
        )
        .context("could not take the migration lock")?;
        if !first.locked {
            tracing::info!("waiting for another instance's migrations to finish");
            diesel::RunQueryDsl::execute(
                diesel::sql_query("SELECT pg_advisory_lock(7220432)"),
                &mut conn,
            )
            .context("could not take the migration lock")?;
        }
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
        Ok(applied.len())
    })
    .await
    .context("migration task panicked")??;
    if applied > 0 {
        tracing::info!(count = applied, "applied database migrations");
    }
    Ok(())
}

/// Connects to the target database; if PostgreSQL says it does not exist, creates it from the
/// `postgres` maintenance database on the same server.
async fn create_database_if_missing(database_url: &str) -> anyhow::Result<()> {
    let config: tokio_postgres::Config = database_url
        .parse()
        .with_context(|| "DATABASE_URL is not a valid PostgreSQL URL".to_string())?;
    let name = config
        .get_dbname()
        .map(str::to_owned)
        .or_else(|| config.get_user().map(str::to_owned))
        .context("DATABASE_URL names no database")?;
    match config.connect(tokio_postgres::NoTls).await {
        Ok(_) => return Ok(()),
        Err(err) if err.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => {}
        Err(err) => return Err(unreachable_hint(database_url, err)),
    }
    let mut maintenance = config.clone();
    maintenance.dbname("postgres");
    let (client, connection) = maintenance
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| unreachable_hint(database_url, e))?;
    let driver = tokio::spawn(connection);
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
    {
        Ok(()) => tracing::info!(database = %name, "created database"),
        // Another process created it between our two connections: fine.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "database `{name}` does not exist and could not be created; create it yourself \
                 (`createdb {name}`) or give the DATABASE_URL role the CREATEDB privilege"
            )));
        }
    }
    drop(client);
    driver.abort();
    Ok(())
}

/// Turns "could not connect" into an error that says what to do about it.
fn unreachable_hint(database_url: &str, err: tokio_postgres::Error) -> anyhow::Error {
    anyhow::Error::new(err).context(format!(
        "could not reach PostgreSQL at {}. Start a local PostgreSQL (for example \
         `pg_ctlcluster 15 main start`), or run `docker compose -f docker/compose.yml up -d db`, \
         or set DATABASE_URL to a server that is running",
        redact_url(database_url)
    ))
}

/// The URL with any password replaced, safe for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/agentry"),
            "postgres://app:***@db:5432/agentry"
        );
        assert_eq!(
            redact_url("postgres://localhost/agentry"),
            "postgres://localhost/agentry"
        );
    }
}
