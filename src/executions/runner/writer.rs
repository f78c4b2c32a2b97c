//! Appending a run's events: each write borrows a pooled connection for one statement or one
//! short transaction, only while the run is still RUNNING, and publishes the event to the hub
//! after the commit that stored it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

use super::{FLUSH_BYTES, WRITE_PATIENCE};

use crate::{
    db::{PatientError, patient, reusable::Reusable, schema::executions},
    executions::{
        hub::{EXECUTION_CHANNEL, RUN_CHANNEL, notify},
        model::{self, EventKind, EventRow, ExecutionRow, ExecutionStatus},
    },
    state::AppState,
};

/// The longest a delta waits for watchers that have not taken the last event.
const MAX_COALESCE: Duration = Duration::from_millis(200);
/// How often a writer held back by such watchers looks again.
const BACKLOG_RECHECK: Duration = Duration::from_millis(5);

/// Whether a failed write was in fact committed by an earlier attempt whose answer was lost
/// (the retry then collides with the event it already inserted).
fn already_written(e: &PatientError) -> bool {
    matches!(
        e,
        PatientError::Query(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _
        ))
    )
}

/// Writes one run's events, tracking the next sequence number.
pub(super) struct Writer<'a> {
    /// The application (pool, hub, settings).
    pub(super) state: &'a AppState,
    /// The run, as it was created.
    pub(super) execution: ExecutionRow,
    /// The sequence number of the last event stored.
    pub(super) sequence: i32,
    /// Output deltas received and not yet written.
    pub(super) pending: String,
    /// Bytes of output stored so far.
    pub(super) output_len: usize,
    /// Last write of any kind (heartbeats are skipped while writes keep it fresh).
    last_write: Instant,
    /// Last delta write (the batching window counts from it).
    last_flush: Option<Instant>,
}

impl<'a> Writer<'a> {
    /// The writer of a run that has just started (its STARTED event is sequence 1).
    pub(super) fn new(state: &'a AppState, execution: ExecutionRow) -> Self {
        Self {
            state,
            execution,
            sequence: 1,
            pending: String::new(),
            output_len: 0,
            last_write: Instant::now(),
            last_flush: None,
        }
    }

    /// Appends buffered deltas as one OUTPUT_DELTA event; false when the run is no longer ours.
    pub(super) async fn flush(&mut self) -> anyhow::Result<bool> {
        if self.pending.is_empty() {
            return Ok(true);
        }
        let delta = std::mem::take(&mut self.pending);
        let len = delta.len();
        let written = self
            .append(EventKind::OutputDelta, Some(delta), None)
            .await?;
        if written {
            self.output_len += len;
            self.last_flush = Some(self.last_write);
        }
        Ok(written)
    }

    /// Appends one event with JSON data (a tool call or result); false when the run is no
    /// longer ours.
    pub(super) async fn record(
        &mut self,
        kind: EventKind,
        data: serde_json::Value,
    ) -> anyhow::Result<bool> {
        self.append(kind, None, Some(data)).await
    }

    /// Appends the next event (an OUTPUT_DELTA's text also extends the run's output) in one
    /// statement, then publishes it; false when the run is no longer RUNNING.
    async fn append(
        &mut self,
        kind: EventKind,
        delta: Option<String>,
        data: Option<serde_json::Value>,
    ) -> anyhow::Result<bool> {
        let sequence = self.sequence + 1;
        let id = self.execution.id;
        let at = model::event_time();
        let (text, json) = (delta.clone(), data.clone());
        // One statement: append the event (and the output), refresh the heartbeat and NOTIFY
        // other processes, but only while the run is still RUNNING. One statement is one
        // transaction, so a retry after a lost answer either redoes it or collides with it.
        let written = patient(&self.state.pool, WRITE_PATIENCE, "writing a run event", move |conn| {
            let (text, json) = (text.clone(), json.clone());
            Box::pin(async move {
                // A fixed text: prepared once per connection, not parsed and planned per event.
                Reusable(diesel::sql_query(
                    "WITH run AS ( \
                         UPDATE executions SET output = output || $2, last_sequence = $3, heartbeat_at = now() \
                         WHERE id = $1 AND status = 'RUNNING' RETURNING id), \
                     event AS ( \
                         INSERT INTO execution_events (execution_id, sequence, kind, delta, data, at) \
                         SELECT id, $3, $6, $7, $8, $4 FROM run RETURNING execution_id) \
                     SELECT pg_notify($5, execution_id::text || ':' || $3::text) FROM event",
                )
                .bind::<diesel::sql_types::Uuid, _>(id)
                .bind::<diesel::sql_types::Text, _>(text.as_deref().unwrap_or_default())
                .bind::<diesel::sql_types::Integer, _>(sequence)
                .bind::<diesel::sql_types::Timestamptz, _>(at)
                .bind::<diesel::sql_types::Text, _>(RUN_CHANNEL)
                .bind::<diesel::sql_types::Text, _>(kind)
                .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(text.as_deref())
                .bind::<diesel::sql_types::Nullable<diesel::sql_types::Jsonb>, _>(json))
                .execute(conn)
                .await
            })
        })
        .await;
        match written {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(e) if already_written(&e) => {}
            Err(e) => return Err(e.into()),
        }
        self.sequence = sequence;
        self.last_write = Instant::now();
        self.state.hub.publish(EventRow {
            execution_id: id,
            sequence,
            kind,
            delta,
            data,
            at,
        });
        Ok(true)
    }

    /// When the buffered deltas should be written: now after a quiet spell (or with a full
    /// buffer), else when the batching window since the last write closes — and, while this
    /// server's watchers have not all taken the last event, not before they have (re-checked
    /// every [`BACKLOG_RECHECK`]) or [`MAX_COALESCE`] has passed since the last write. Under a
    /// load the server cannot deliver at full rate, fewer and larger events then reach every
    /// watcher sooner than a growing queue of small ones; the output is the same.
    pub(super) fn flush_due(&self, window: Duration) -> Instant {
        let now = Instant::now();
        let Some(last) = self.last_flush else {
            return now;
        };
        if self.pending.len() >= FLUSH_BYTES {
            return now;
        }
        let due = last + window;
        let cap = last + MAX_COALESCE;
        if due <= now && now < cap && self.state.hub.backlog(self.execution.id) > 0 {
            return (now + BACKLOG_RECHECK).min(cap);
        }
        due
    }

    /// Refreshes the heartbeat when nothing was written for `every`; false when the run is no
    /// longer ours.
    pub(super) async fn heartbeat(&mut self, every: Duration) -> anyhow::Result<bool> {
        if self.last_write.elapsed() < every {
            return Ok(true);
        }
        let id = self.execution.id;
        let n = patient(
            &self.state.pool,
            WRITE_PATIENCE,
            "refreshing a run's heartbeat",
            move |conn| {
                Box::pin(
                    diesel::update(executions::table.find(id))
                        .filter(executions::status.eq(ExecutionStatus::Running))
                        .set(executions::heartbeat_at.eq(diesel::dsl::now))
                        .execute(conn),
                )
            },
        )
        .await?;
        self.last_write = Instant::now();
        Ok(n == 1)
    }
}

/// QUEUED → RUNNING with the STARTED event; `None` when the run was ended by someone else
/// before it started, else whether a cancel was requested while it was queued.
pub(super) async fn start(
    state: &AppState,
    execution: &ExecutionRow,
) -> anyhow::Result<Option<bool>> {
    let (id, user_id) = (execution.id, execution.user_id);
    let at = model::event_time();
    let data = json!({"model": execution.model, "provider": execution.provider});
    let event_data = data.clone();
    let started = patient(&state.pool, WRITE_PATIENCE, "starting a run", move |conn| {
        let data = data.clone();
        Box::pin(conn.transaction(async move |conn| {
            let started: Option<bool> = diesel::update(executions::table.find(id))
                .filter(executions::status.eq(ExecutionStatus::Queued))
                .set((
                    executions::status.eq(ExecutionStatus::Running),
                    executions::started_at.eq(diesel::dsl::now),
                    executions::heartbeat_at.eq(diesel::dsl::now),
                    executions::last_sequence.eq(1),
                ))
                .returning(executions::cancel_requested)
                .get_result(conn)
                .await
                .optional()?;
            if started.is_some() {
                insert_event(conn, id, 1, EventKind::Started, data, at).await?;
                notify(conn, RUN_CHANNEL, &format!("{id}:1")).await?;
                notify(conn, EXECUTION_CHANNEL, &format!("{id}:{user_id}")).await?;
            }
            Ok(started)
        }))
    })
    .await?;
    if started.is_some() {
        state.hub.publish(EventRow {
            execution_id: id,
            sequence: 1,
            kind: EventKind::Started,
            delta: None,
            data: Some(event_data),
            at,
        });
    }
    Ok(started)
}

/// Inserts one event with JSON data (not an output delta) in the caller's transaction.
pub(super) async fn insert_event(
    conn: &mut AsyncPgConnection,
    execution_id: Uuid,
    sequence: i32,
    kind: EventKind,
    data: serde_json::Value,
    at: DateTime<Utc>,
) -> QueryResult<()> {
    use crate::db::schema::execution_events;
    diesel::insert_into(execution_events::table)
        .values((
            execution_events::execution_id.eq(execution_id),
            execution_events::sequence.eq(sequence),
            execution_events::kind.eq(kind),
            execution_events::data.eq(Some(data)),
            execution_events::at.eq(at),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}
