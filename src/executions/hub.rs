//! The live hub: wakes subscribers when a run has new events, tells users' `executionUpdates`
//! streams about status changes, and delivers cancellations to the runner that owns a run.
//!
//! Waking crosses processes through PostgreSQL `LISTEN/NOTIFY`: writers `NOTIFY` after each
//! commit (payload: ids only, the tables stay the source of truth) and every server process
//! keeps one dedicated `LISTEN` connection that feeds its local hub. After the listener
//! reconnects, a resync wakes every subscriber to re-read from the table, so nothing sent while
//! it was away is missed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

/// Channel: a run has events up to a sequence (`<execution id>:<sequence>`).
pub const RUN_CHANNEL: &str = "agentry_run";
/// Channel: a run changed status (`<execution id>:<user id>`).
pub const EXECUTION_CHANNEL: &str = "agentry_execution";
/// Channel: cancel a run (`<execution id>`).
pub const CANCEL_CHANNEL: &str = "agentry_cancel";

/// In-process fan-out, fed by the LISTEN connection.
#[derive(Default)]
pub struct Hub {
    /// Latest known sequence of each run somebody watches.
    runs: Mutex<HashMap<Uuid, watch::Sender<i32>>>,
    /// Status changes of each user's runs (execution ids).
    users: Mutex<HashMap<Uuid, broadcast::Sender<Uuid>>>,
    /// Cancellation switches of the runs executing in this process.
    cancels: Mutex<HashMap<Uuid, watch::Sender<bool>>>,
    /// Bumped whenever subscribers must re-read (listener reconnected).
    resync: watch::Sender<u64>,
}

/// A subscription to one run's progress; dropping it unregisters.
pub struct RunWatch {
    /// Changes when the run has new events.
    pub advanced: watch::Receiver<i32>,
    /// Changes when every subscriber should re-read.
    pub resync: watch::Receiver<u64>,
}

impl Hub {
    /// A new, empty hub.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Watches a run. Register before reading the table, so no event falls in between.
    pub fn watch_run(&self, execution_id: Uuid) -> RunWatch {
        let advanced = match self.runs.lock() {
            Ok(mut runs) => {
                runs.retain(|_, sender| sender.receiver_count() > 0);
                runs.entry(execution_id)
                    .or_insert_with(|| watch::channel(0).0)
                    .subscribe()
            }
            Err(_) => watch::channel(0).1,
        };
        RunWatch {
            advanced,
            resync: self.resync.subscribe(),
        }
    }

    /// A run has events up to `sequence`.
    pub fn run_advanced(&self, execution_id: Uuid, sequence: i32) {
        if let Ok(runs) = self.runs.lock()
            && let Some(sender) = runs.get(&execution_id)
        {
            sender.send_if_modified(|seen| {
                let newer = sequence > *seen;
                if newer {
                    *seen = sequence;
                }
                newer
            });
        }
    }

    /// Watches the status changes of a user's runs.
    pub fn watch_user(&self, user_id: Uuid) -> broadcast::Receiver<Uuid> {
        match self.users.lock() {
            Ok(mut users) => {
                users.retain(|_, sender| sender.receiver_count() > 0);
                users
                    .entry(user_id)
                    .or_insert_with(|| broadcast::channel(64).0)
                    .subscribe()
            }
            Err(_) => broadcast::channel(1).1,
        }
    }

    /// A run of `user_id` changed status.
    pub fn execution_changed(&self, execution_id: Uuid, user_id: Uuid) {
        if let Ok(users) = self.users.lock()
            && let Some(sender) = users.get(&user_id)
        {
            let _ = sender.send(execution_id);
        }
    }

    /// Registers a run executing here; the receiver turns true when it must stop.
    pub fn register_runner(&self, execution_id: Uuid) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        if let Ok(mut cancels) = self.cancels.lock() {
            cancels.insert(execution_id, tx);
        }
        rx
    }

    /// Forgets a run that ended here.
    pub fn unregister_runner(&self, execution_id: Uuid) {
        if let Ok(mut cancels) = self.cancels.lock() {
            cancels.remove(&execution_id);
        }
    }

    /// Stops a run if it executes in this process; returns whether it did.
    pub fn cancel(&self, execution_id: Uuid) -> bool {
        self.cancels
            .lock()
            .ok()
            .and_then(|cancels| cancels.get(&execution_id).map(|tx| tx.send(true).is_ok()))
            .unwrap_or(false)
    }

    /// Stops every run executing in this process (shutdown); returns how many.
    pub fn stop_all_runners(&self) -> usize {
        self.cancels
            .lock()
            .map(|cancels| {
                for tx in cancels.values() {
                    let _ = tx.send(true);
                }
                cancels.len()
            })
            .unwrap_or(0)
    }

    /// How many runs execute in this process.
    pub fn running_here(&self) -> usize {
        self.cancels.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Wakes every subscriber to re-read from the table.
    pub fn resync(&self) {
        self.resync.send_modify(|n| *n += 1);
    }

    /// Handles one NOTIFY.
    fn dispatch(&self, channel: &str, payload: &str) {
        let mut parts = payload.split(':');
        let Some(Ok(id)) = parts.next().map(Uuid::parse_str) else {
            return;
        };
        match channel {
            RUN_CHANNEL => {
                if let Some(Ok(sequence)) = parts.next().map(str::parse) {
                    self.run_advanced(id, sequence);
                }
            }
            EXECUTION_CHANNEL => {
                if let Some(Ok(user)) = parts.next().map(Uuid::parse_str) {
                    self.execution_changed(id, user);
                }
            }
            CANCEL_CHANNEL => {
                self.cancel(id);
            }
            _ => {}
        }
    }
}

/// Sends a NOTIFY on `channel` (delivered when the surrounding transaction commits).
pub async fn notify(
    conn: &mut AsyncPgConnection,
    channel: &str,
    payload: &str,
) -> diesel::QueryResult<()> {
    diesel::sql_query("SELECT pg_notify($1, $2)")
        .bind::<diesel::sql_types::Text, _>(channel)
        .bind::<diesel::sql_types::Text, _>(payload)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Keeps one LISTEN connection open for the life of the process, reconnecting after a drop.
pub fn spawn_listener(hub: Arc<Hub>, database_url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            match listen(&hub, &database_url).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    })
}

async fn listen(hub: &Hub, database_url: &str) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) =
        tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(message) => {
                    if tx.send(message).is_err() {
                        break;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!(
            "LISTEN {RUN_CHANNEL}; LISTEN {EXECUTION_CHANNEL}; LISTEN {CANCEL_CHANNEL};"
        ))
        .await?;
    // Anything sent while we were not listening is in the tables: have everyone re-read.
    hub.resync();
    while let Some(message) = rx.recv().await {
        if let tokio_postgres::AsyncMessage::Notification(n) = message {
            hub.dispatch(n.channel(), n.payload());
        }
    }
    drop(client);
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}
