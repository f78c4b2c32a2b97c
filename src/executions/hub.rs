//! The live hub: fans run events and status changes out to this process's subscribers, and
//! delivers cancellations to the runner that owns a run.
//!
//! PostgreSQL is the log, not the fan-out medium. Each watched run has one in-process
//! [`broadcast`] feed of its events:
//! - a run executing in this process feeds it directly: the runner publishes each event right
//!   after the commit that stored it ([`Hub::publish`]);
//! - a run executing elsewhere reaches us through `LISTEN/NOTIFY` (payload: run id and
//!   sequence); one fetch task per run per process reads the new rows once and publishes them,
//!   so the database work per token does not grow with the number of watchers.
//!
//! A feed only ever publishes sequence `last + 1` (a duplicate is dropped), and a subscriber
//! checks the same on its side: on a gap, a lag or a resync it re-reads from the table. So the
//! contract — no gap, no duplicate, complete after the terminal event — never depends on the
//! feed being perfect. Status changes (`executionUpdates`) work the same way: one read of the
//! changed row per process per change, broadcast to the user's watchers.
//!
//! After the listener reconnects, a resync has every subscriber re-read from the table, so
//! nothing sent while it was away is missed.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::{
    db::{Pool, patient},
    executions::model::{self, EventRow, ExecutionRow},
    state::{REVOKE_CHANNEL, Revocation},
};

/// Channel: a run has events up to a sequence (`<execution id>:<sequence>`).
pub const RUN_CHANNEL: &str = "agentry_run";
/// Channel: a run changed status (`<execution id>:<user id>`).
pub const EXECUTION_CHANNEL: &str = "agentry_execution";
/// Channel: cancel a run (`<execution id>`).
pub const CANCEL_CHANNEL: &str = "agentry_cancel";
/// Channel: something watched by id changed (`<id>`): a crew run's status or steps. Watchers
/// re-read what they show; the payload carries nothing else.
pub const SIGNAL_CHANNEL: &str = "agentry_signal";

/// Events a feed keeps for subscribers that are momentarily behind; a subscriber further
/// behind than this re-reads from the table (a slow reader costs its own reads, nobody else's).
const FEED_CAPACITY: usize = 1024;
/// Status changes kept per user for watchers that are momentarily behind.
const USER_CAPACITY: usize = 256;
/// Rows a fetch task reads per statement.
const FETCH_PAGE: i64 = 500;
/// How long a fetch task waits for the database before giving up (subscribers then re-read).
const FETCH_PATIENCE: Duration = Duration::from_secs(30);

/// What a feed has published.
#[derive(Debug, Default)]
struct FeedState {
    /// The highest sequence published (`None` until the first event or the first subscriber
    /// that caught up from the table says where the table ends).
    published: Option<i32>,
    /// The highest sequence a NOTIFY announced.
    announced: i32,
    /// Whether a fetch task is reading this run's new rows.
    fetching: bool,
}

/// One run's in-process event feed.
struct RunFeed {
    tx: broadcast::Sender<Arc<EventRow>>,
    state: Mutex<FeedState>,
}

impl RunFeed {
    fn state(&self) -> MutexGuard<'_, FeedState> {
        // A panic while holding this lock cannot leave the state inconsistent (plain numbers).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The status-change feed of one user's runs.
struct UserFeed {
    tx: broadcast::Sender<Arc<ExecutionRow>>,
    /// Runs whose row must be read and broadcast.
    pending: Mutex<(HashSet<Uuid>, bool)>,
}

/// In-process fan-out, fed by local runners and by the LISTEN connection.
pub struct Hub {
    /// Reads rows for runs of other processes and for status changes.
    pool: Pool,
    /// The feed of each run somebody here watches.
    runs: Mutex<HashMap<Uuid, Arc<RunFeed>>>,
    /// The status-change feed of each user somebody here watches.
    users: Mutex<HashMap<Uuid, Arc<UserFeed>>>,
    /// Cancellation switches of the runs executing in this process.
    cancels: Mutex<HashMap<Uuid, watch::Sender<bool>>>,
    /// Change counters of the things watched here by id ([`SIGNAL_CHANNEL`]).
    signals: Mutex<HashMap<Uuid, watch::Sender<u64>>>,
    /// Bumped whenever subscribers must re-read (listener reconnected).
    resync: watch::Sender<u64>,
    /// Where revocations heard from other servers go (to this server's open sockets).
    revocations: broadcast::Sender<Revocation>,
    /// True while the LISTEN connection is up (the session cache answers only then).
    hearing: Arc<std::sync::atomic::AtomicBool>,
}

/// A subscription to one run's events; dropping it unregisters.
pub struct RunFollow {
    /// The run.
    pub execution_id: Uuid,
    /// Events as they are published (check the sequence: the feed may start mid-run).
    pub events: broadcast::Receiver<Arc<EventRow>>,
    /// Changes when every subscriber should re-read.
    pub resync: watch::Receiver<u64>,
    feed: Arc<RunFeed>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hub {
    /// A new, empty hub that reads through `pool`, passes revocations other servers announce
    /// to `revocations`, and keeps `hearing` true while its LISTEN connection is up.
    pub fn new(
        pool: Pool,
        revocations: broadcast::Sender<Revocation>,
        hearing: Arc<std::sync::atomic::AtomicBool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            pool,
            revocations,
            hearing,
            runs: Mutex::default(),
            users: Mutex::default(),
            cancels: Mutex::default(),
            signals: Mutex::default(),
            resync: watch::channel(0).0,
        })
    }

    /// Follows a run. Call before reading the table, so no event falls in between.
    pub fn follow_run(&self, execution_id: Uuid) -> RunFollow {
        let (feed, events) = {
            let mut runs = lock(&self.runs);
            runs.retain(|_, feed| feed.tx.receiver_count() > 0);
            let feed = runs
                .entry(execution_id)
                .or_insert_with(|| {
                    Arc::new(RunFeed {
                        tx: broadcast::channel(FEED_CAPACITY).0,
                        state: Mutex::default(),
                    })
                })
                .clone();
            // Subscribed under the lock: a new feed has no receiver until then, and another
            // follower's `retain` in between would drop it from the map, leaving this follower
            // on a feed nobody publishes to (it would hear its run only at the safety poll).
            let events = feed.tx.subscribe();
            (feed, events)
        };
        RunFollow {
            execution_id,
            events,
            resync: self.resync.subscribe(),
            feed,
        }
    }

    /// Runs with a live feed here (tests and metrics).
    pub fn followed_runs(&self) -> usize {
        lock(&self.runs)
            .values()
            .filter(|feed| feed.tx.receiver_count() > 0)
            .count()
    }

    /// A subscriber read the table up to `sequence`: a feed that has not published yet may
    /// start there, and catch up on what other processes announced meanwhile.
    pub fn caught_up(self: &Arc<Self>, follow: &RunFollow, sequence: i32) {
        let fetch = {
            let mut state = follow.feed.state();
            if state.published.is_none() {
                state.published = Some(sequence);
            }
            self.should_fetch(&mut state)
        };
        if fetch {
            self.spawn_fetch(follow.execution_id, follow.feed.clone());
        }
    }

    /// Events of a run published here that some local subscriber has not taken yet (0 when
    /// nobody here follows it): the runner's measure of back-pressure.
    pub fn backlog(&self, execution_id: Uuid) -> usize {
        lock(&self.runs)
            .get(&execution_id)
            .map_or(0, |feed| feed.tx.len())
    }

    /// Publishes an event this process just stored (the runner, after its commit).
    pub fn publish(&self, event: EventRow) {
        let feed = lock(&self.runs).get(&event.execution_id).cloned();
        if let Some(feed) = feed {
            publish_to(&feed, Arc::new(event));
        }
    }

    /// A NOTIFY said a run has events up to `sequence`.
    fn run_advanced(self: &Arc<Self>, execution_id: Uuid, sequence: i32) {
        // A run executing here publishes its own events; nothing to read.
        if lock(&self.cancels).contains_key(&execution_id) {
            return;
        }
        let Some(feed) = lock(&self.runs).get(&execution_id).cloned() else {
            return; // nobody here watches it
        };
        let fetch = {
            let mut state = feed.state();
            state.announced = state.announced.max(sequence);
            self.should_fetch(&mut state)
        };
        if fetch {
            self.spawn_fetch(execution_id, feed);
        }
    }

    /// Whether a fetch task must start (and marks it started).
    fn should_fetch(&self, state: &mut FeedState) -> bool {
        let behind = state.published.is_some_and(|p| p < state.announced);
        if behind && !state.fetching {
            state.fetching = true;
            return true;
        }
        false
    }

    /// Reads a run's new rows once and publishes them, until the feed has what was announced.
    fn spawn_fetch(self: &Arc<Self>, execution_id: Uuid, feed: Arc<RunFeed>) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            loop {
                let from = {
                    let mut state = feed.state();
                    match state.published {
                        Some(p) if p < state.announced && feed.tx.receiver_count() > 0 => p,
                        _ => {
                            state.fetching = false;
                            return;
                        }
                    }
                };
                let rows = patient(
                    &pool,
                    FETCH_PATIENCE,
                    "reading a run's new events",
                    move |conn| Box::pin(model::events_after(conn, execution_id, from, FETCH_PAGE)),
                )
                .await;
                let rows = match rows {
                    Ok(rows) if !rows.is_empty() => rows,
                    // Nothing (yet) or no database: stop; subscribers' own re-reads cover it.
                    _ => {
                        feed.state().fetching = false;
                        return;
                    }
                };
                for row in rows {
                    publish_to(&feed, Arc::new(row));
                }
            }
        });
    }

    /// Watches the status changes of a user's runs (each item is the run as it is now).
    pub fn watch_user(&self, user_id: Uuid) -> broadcast::Receiver<Arc<ExecutionRow>> {
        let mut users = lock(&self.users);
        users.retain(|_, feed| feed.tx.receiver_count() > 0);
        users
            .entry(user_id)
            .or_insert_with(|| {
                Arc::new(UserFeed {
                    tx: broadcast::channel(USER_CAPACITY).0,
                    pending: Mutex::default(),
                })
            })
            .tx
            .subscribe()
    }

    /// A run of `user_id` changed status: read it once and tell the user's watchers here.
    fn execution_changed(&self, execution_id: Uuid, user_id: Uuid) {
        let Some(feed) = lock(&self.users).get(&user_id).cloned() else {
            return;
        };
        let start = {
            let mut pending = lock(&feed.pending);
            pending.0.insert(execution_id);
            !std::mem::replace(&mut pending.1, true)
        };
        if !start {
            return; // the running reader picks it up
        }
        // One reader per user at a time, so watchers see each run's states in order.
        let pool = self.pool.clone();
        tokio::spawn(async move {
            loop {
                let ids: Vec<Uuid> = {
                    let mut pending = lock(&feed.pending);
                    if pending.0.is_empty() || feed.tx.receiver_count() == 0 {
                        pending.0.clear();
                        pending.1 = false;
                        return;
                    }
                    pending.0.drain().collect()
                };
                let rows = patient(&pool, FETCH_PATIENCE, "reading changed runs", |conn| {
                    let ids = ids.clone();
                    Box::pin(async move { model::find_many(conn, &ids).await })
                })
                .await;
                match rows {
                    Ok(rows) => {
                        for row in rows {
                            let _ = feed.tx.send(Arc::new(row));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "status changes not delivered"),
                }
            }
        });
    }

    /// Watches the changes announced for `id` on [`SIGNAL_CHANNEL`] (by any instance): the
    /// receiver's value changes after each. Rare events only (a crew run's steps): watchers
    /// re-read the table on each.
    pub fn watch_signal(&self, id: Uuid) -> watch::Receiver<u64> {
        let mut signals = lock(&self.signals);
        signals.retain(|_, tx| tx.receiver_count() > 0);
        signals
            .entry(id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Changes when every watcher should re-read (the listener reconnected).
    pub fn watch_resync(&self) -> watch::Receiver<u64> {
        self.resync.subscribe()
    }

    /// Registers a run executing here; the receiver turns true when it must stop.
    pub fn register_runner(&self, execution_id: Uuid) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        lock(&self.cancels).insert(execution_id, tx);
        rx
    }

    /// Forgets a run that ended here.
    pub fn unregister_runner(&self, execution_id: Uuid) {
        lock(&self.cancels).remove(&execution_id);
    }

    /// Stops a run if it executes in this process; returns whether it did.
    pub fn cancel(&self, execution_id: Uuid) -> bool {
        lock(&self.cancels)
            .get(&execution_id)
            .is_some_and(|tx| tx.send(true).is_ok())
    }

    /// Stops every run executing in this process (shutdown); returns how many.
    pub fn stop_all_runners(&self) -> usize {
        let cancels = lock(&self.cancels);
        for tx in cancels.values() {
            let _ = tx.send(true);
        }
        cancels.len()
    }

    /// How many runs execute in this process.
    pub fn running_here(&self) -> usize {
        lock(&self.cancels).len()
    }

    /// Wakes every subscriber to re-read from the table.
    pub fn resync(&self) {
        self.resync.send_modify(|n| *n += 1);
    }

    /// Handles one NOTIFY.
    fn dispatch(self: &Arc<Self>, channel: &str, payload: &str) {
        if channel == REVOKE_CHANNEL {
            if let Some(revocation) = Revocation::from_payload(payload) {
                let _ = self.revocations.send(revocation);
            }
            return;
        }
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
            SIGNAL_CHANNEL => {
                let mut signals = lock(&self.signals);
                match signals.get(&id) {
                    Some(tx) if tx.receiver_count() == 0 => {
                        signals.remove(&id);
                    }
                    Some(tx) => tx.send_modify(|n| *n += 1),
                    None => {}
                }
            }
            _ => {}
        }
    }
}

/// Sends `event` if it is the feed's next sequence (or its first); drops duplicates. A feed
/// that finds itself behind (it started mid-run) still sends: subscribers see the gap and
/// re-read.
fn publish_to(feed: &RunFeed, event: Arc<EventRow>) {
    let mut state = feed.state();
    if state.published.is_some_and(|p| event.sequence <= p) {
        return;
    }
    state.published = Some(event.sequence);
    state.announced = state.announced.max(event.sequence);
    // Sent under the lock, so two publishers cannot interleave out of order.
    let _ = feed.tx.send(event);
}

/// Sends a NOTIFY on `channel` (delivered when the surrounding transaction commits).
pub async fn notify(
    conn: &mut AsyncPgConnection,
    channel: &str,
    payload: &str,
) -> diesel::QueryResult<()> {
    // A fixed text, sent with every run start and end: prepared once per connection.
    crate::db::reusable::Reusable(
        diesel::sql_query("SELECT pg_notify($1, $2)")
            .bind::<diesel::sql_types::Text, _>(channel)
            .bind::<diesel::sql_types::Text, _>(payload),
    )
    .execute(conn)
    .await
    .map(|_| ())
}

/// Keeps one LISTEN connection open for the life of the process, reconnecting after a drop.
pub fn spawn_listener(hub: Arc<Hub>, database_url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            let result = listen(&hub, &database_url).await;
            // Until the next LISTEN, other servers' revocations go unheard.
            hub.hearing
                .store(false, std::sync::atomic::Ordering::Release);
            let _ = hub.revocations.send(Revocation::Unheard);
            match result {
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

async fn listen(hub: &Arc<Hub>, database_url: &str) -> Result<(), tokio_postgres::Error> {
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
            "LISTEN {RUN_CHANNEL}; LISTEN {EXECUTION_CHANNEL}; LISTEN {CANCEL_CHANNEL}; \
             LISTEN {SIGNAL_CHANNEL}; LISTEN {REVOKE_CHANNEL};"
        ))
        .await?;
    // Anything sent while we were not listening is in the tables: have everyone re-read, and
    // have every socket check its session (revocations announced meanwhile were missed).
    hub.resync();
    hub.hearing
        .store(true, std::sync::atomic::Ordering::Release);
    let _ = hub.revocations.send(Revocation::Recheck);
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

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc, Barrier,
        atomic::{AtomicBool, Ordering},
    };

    use tokio::sync::broadcast;
    use uuid::Uuid;

    use super::Hub;
    use crate::executions::model::{EventKind, EventRow};

    /// A run's first follower races other runs' followers, each of whom prunes the feeds that
    /// nobody follows: the first follower must still be on the feed its run publishes to.
    /// (Subscribed after the map's lock, the follower lost that race within 4 to 1,200
    /// rounds on 2 cores; on one core the race may not show, and the test then passes anyway.)
    #[test]
    fn a_first_follower_hears_its_run_while_others_follow_theirs() {
        let pool = crate::db::pool(
            "postgres://nobody@127.0.0.1:1/unused",
            1,
            crate::db::QueryCounter::default(),
            false,
        )
        .expect("a pool is built without connecting");
        let hub = Hub::new(
            pool,
            broadcast::channel(1).0,
            Arc::new(AtomicBool::new(false)),
        );
        let done = AtomicBool::new(false);
        let started = Barrier::new(2);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                started.wait();
                while !done.load(Ordering::Relaxed) {
                    drop(hub.follow_run(Uuid::now_v7()));
                }
            });
            started.wait();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for round in 0..10_000 {
                    let id = Uuid::now_v7();
                    let mut follow = hub.follow_run(id);
                    hub.publish(EventRow {
                        execution_id: id,
                        sequence: 1,
                        kind: EventKind::Started,
                        delta: None,
                        data: None,
                        at: chrono::Utc::now(),
                    });
                    assert_eq!(
                        follow.events.try_recv().map(|event| event.sequence),
                        Ok(1),
                        "round {round}: the follower is on a feed the run does not publish to"
                    );
                }
            }));
            done.store(true, Ordering::Relaxed);
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        });
    }
}
