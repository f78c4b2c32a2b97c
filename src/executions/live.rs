//! Following runs live: the catch-up-then-follow loop behind the `executionEvents` and
//! `executionUpdates` subscriptions.
//!
//! A subscriber replays `sequence > after` from the table once, then follows the run's
//! in-process feed ([`Hub`](super::hub::Hub)). Every event it yields is exactly `last + 1`:
//! a duplicate is skipped, and a gap, a lag (the subscriber fell more than the feed's capacity
//! behind) or a resync sends it back to the table for what it missed. So the promise — no gap,
//! no duplicate, complete after the terminal event — holds whatever the feed does, and a slow
//! subscriber costs its own reads, not everyone's. Reads wait for a busy pool instead of
//! ending the stream.

use std::{sync::Arc, time::Duration};

use futures_util::Stream;
use tokio::{sync::broadcast::error::RecvError, time::Instant};
use uuid::Uuid;

use crate::{
    db::patient,
    error::{AppError, AppResult},
    executions::model::{self, EventRow, ExecutionRow},
    request::Viewer,
    state::AppState,
};

/// Events read from the table per statement.
const EVENT_PAGE: i64 = 500;
/// A subscriber that heard nothing for this long re-reads the table (belt and braces for a
/// NOTIFY lost while the listener reconnects; the resync covers the usual case).
const SAFETY_POLL: Duration = Duration::from_secs(30);
/// How long a subscription waits for the database before it ends with an error.
const READ_PATIENCE: Duration = Duration::from_secs(60);

fn not_found() -> AppError {
    AppError::NotFound { what: "execution" }
}

/// The viewer's run `id`, waiting for a busy pool rather than failing.
async fn owned_run(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<ExecutionRow> {
    let user_id = viewer.id();
    patient(
        &state.pool,
        READ_PATIENCE,
        "checking a subscribed run",
        move |conn| Box::pin(model::find_owned(conn, user_id, id)),
    )
    .await?
    .ok_or_else(not_found)
}

/// Events of the viewer's run `id` after `after`: stored ones first, then live ones, with no
/// gap and no duplicate; ends after the terminal event. `NOT_FOUND` when the run is not theirs.
pub async fn events(
    state: &AppState,
    viewer: &Viewer,
    id: Uuid,
    after: i32,
) -> AppResult<impl Stream<Item = AppResult<Arc<EventRow>>> + Send + use<>> {
    if after < 0 {
        return Err(AppError::bad_input("after", "must be 0 or more"));
    }
    owned_run(state, viewer, id).await?;
    let state = state.clone();
    // Follow before the first read: an event committed in between is in the feed.
    let mut follow = state.hub.follow_run(id);
    let mut last = after;
    Ok(async_stream::stream! {
        'replay: loop {
            // Catch up from the table.
            loop {
                let from = last;
                let batch = patient(&state.pool, READ_PATIENCE, "replaying a run's events", move |conn| {
                    Box::pin(model::events_after(conn, id, from, EVENT_PAGE))
                })
                .await;
                let batch = match batch {
                    Ok(batch) => batch,
                    Err(e) => {
                        yield Err(e.into());
                        return;
                    }
                };
                let full = batch.len() as i64 == EVENT_PAGE;
                for event in batch {
                    last = event.sequence;
                    let terminal = event.kind.is_terminal();
                    yield Ok(Arc::new(event));
                    if terminal {
                        return;
                    }
                }
                if !full {
                    break;
                }
            }
            state.hub.caught_up(&follow, last);
            // Then follow the feed. This loop runs once per event per subscriber, so its
            // timer and its resync wait are made once and kept, not remade per event.
            let mut heard = Instant::now();
            let safety = tokio::time::sleep(SAFETY_POLL);
            let resync = follow.resync.changed();
            tokio::pin!(safety, resync);
            loop {
                let received = tokio::select! {
                    biased;
                    received = follow.events.recv() => received,
                    _ = &mut resync => continue 'replay,
                    () = &mut safety => {
                        if heard.elapsed() >= SAFETY_POLL {
                            continue 'replay;
                        }
                        safety.as_mut().reset(heard + SAFETY_POLL);
                        continue;
                    }
                };
                heard = Instant::now();
                match received {
                    Ok(event) if event.sequence <= last => {} // already sent
                    Ok(event) if event.sequence == last + 1 => {
                        last = event.sequence;
                        let terminal = event.kind.is_terminal();
                        yield Ok(event);
                        if terminal {
                            return;
                        }
                    }
                    // A gap (the feed started after us) or we fell behind: the table has it.
                    Ok(_) | Err(RecvError::Lagged(_)) => continue 'replay,
                    Err(RecvError::Closed) => {
                        tokio::time::sleep(SAFETY_POLL).await;
                        continue 'replay;
                    }
                }
            }
        }
    })
}

/// Status changes of the viewer's runs, each the run as it is after the change.
pub fn updates(
    state: &AppState,
    viewer: &Viewer,
) -> impl Stream<Item = AppResult<ExecutionRow>> + Send + use<> {
    let user_id = viewer.id();
    let mut changes = state.hub.watch_user(user_id);
    async_stream::stream! {
        loop {
            match changes.recv().await {
                // The hub reads each change once for all of the user's watchers here.
                Ok(row) if row.user_id == user_id => yield Ok(ExecutionRow::clone(&row)),
                Ok(_) => {}
                // Fell behind: the newest states follow; older ones are superseded anyway.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            }
        }
    }
}
