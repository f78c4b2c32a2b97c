//! Following a crew run live: the stream behind the `crewRunEvents` subscription.
//!
//! A crew run's steps are ordinary runs, so the stream is a merge: for each step (in the order
//! they started) a STEP_STARTED item, then that run's own event stream
//! (`executions::live::events`: replay, then the in-process feed, no gap, no duplicate), and
//! after the crew run has ended and every step's stream has completed, one terminal item.
//! Steps come one after the other, in the order they started: a step's items begin after the
//! earlier steps' terminal events — except the manager's, which interleave with its
//! delegations' as they happen. A step that had already ended when the subscriber found it
//! comes whole. So the order does not depend on when a subscriber reads, and a crew run
//! followed after its end is replayed the same way every time.
//! The crew run's own changes (a step started, the end) are announced on the hub's signal
//! channel by whichever instance coordinates it; each announcement makes the subscriber re-read
//! the crew run row and its steps (two statements, a handful of times per crew run), while the
//! tokens go through the runs' shared feeds. A subscription always starts from the beginning of
//! the crew run, so a client that reconnects gets the whole run again in the same order.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use futures_util::{Stream, StreamExt, stream::SelectAll};
use uuid::Uuid;

use crate::{
    crews::{model::CrewRunRow, service},
    error::AppResult,
    executions::{
        self,
        model::{CrewRole, EventRow, ExecutionRow},
    },
    request::Viewer,
    state::AppState,
};

/// Steps of one crew run a subscriber follows at most (tasks + the manager + delegations).
const MAX_STEPS: i64 = 200;
/// A subscriber that heard nothing for this long re-reads the crew run (belt and braces for a
/// NOTIFY lost while the listener reconnects).
const SAFETY_POLL: Duration = Duration::from_secs(30);

/// What a crew run subscriber receives.
#[derive(Debug, Clone)]
pub enum CrewEvent {
    /// A step (run) started: a task, the manager, or a delegation.
    StepStarted(ExecutionRow),
    /// An event of a step, with the step's part in the crew run.
    Step {
        /// The event.
        event: Arc<EventRow>,
        /// The step's part.
        role: Option<CrewRole>,
        /// The step's task, for a TASK step.
        task: Option<i32>,
    },
    /// The crew run ended (terminal: the stream completes after it).
    Ended(CrewRunRow),
}

type StepStream = Pin<Box<dyn Stream<Item = AppResult<Arc<EventRow>>> + Send>>;
/// A step's stream, its items tagged with the step's id.
type TaggedStep = Pin<Box<dyn Stream<Item = (Uuid, AppResult<Arc<EventRow>>)> + Send>>;

/// The viewer's crew run `id` as it happens, from its beginning; `NOT_FOUND` when it is not
/// theirs.
pub async fn events(
    state: &AppState,
    viewer: &Viewer,
    id: Uuid,
) -> AppResult<impl Stream<Item = AppResult<CrewEvent>> + Send + use<>> {
    service::get_run(state, viewer, id).await?;
    let state = state.clone();
    let viewer = viewer.clone();
    // Watch before the first read: a change committed in between is not missed.
    let mut signal = state.hub.watch_signal(id);
    let mut resync = state.hub.watch_resync();
    Ok(async_stream::stream! {
        // Steps found, by id: their part in the crew run.
        let mut known: HashMap<Uuid, (Option<CrewRole>, Option<i32>)> = HashMap::new();
        // Steps found but not started here yet, in the order they started.
        let mut queue: VecDeque<ExecutionRow> = VecDeque::new();
        // Started steps other than the manager whose terminal event has not come yet.
        let mut working: HashSet<Uuid> = HashSet::new();
        let mut steps: SelectAll<TaggedStep> = SelectAll::new();
        let mut ended: Option<CrewRunRow> = None;
        'read: loop {
            let _ = signal.borrow_and_update();
            let _ = resync.borrow_and_update();
            if ended.is_none() {
                // The crew run first, then its steps: a crew run read as ended has all its
                // steps in the second read.
                let run = match service::get_run_patiently(&state, &viewer, id).await {
                    Ok(run) => run,
                    Err(e) => {
                        yield Err(e);
                        return;
                    }
                };
                let rows = match executions::service::of_crew_run(&state, id, MAX_STEPS).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        yield Err(e);
                        return;
                    }
                };
                for row in rows {
                    if known.insert(row.id, (row.crew_role, row.crew_task)).is_none() {
                        queue.push_back(row);
                    }
                }
                if run.status.is_finished() {
                    ended = Some(run);
                }
            }
            loop {
                // Start the queued steps in order; a step waits until the earlier steps other
                // than the manager have sent their terminal event, so the order does not depend
                // on when this subscriber happened to read (nor on which instance ran what).
                loop {
                    let ready = queue
                        .front()
                        .is_some_and(|next| next.crew_role == Some(CrewRole::Manager) || working.is_empty());
                    if !ready {
                        break;
                    }
                    let Some(row) = queue.pop_front() else {
                        break;
                    };
                    let step: StepStream = match executions::live::events(&state, &viewer, row.id, 0).await {
                        Ok(stream) => Box::pin(stream),
                        Err(e) => {
                            yield Err(e);
                            return;
                        }
                    };
                    let (step_id, role, task) = (row.id, row.crew_role, row.crew_task);
                    if !row.is_finished() {
                        if role != Some(CrewRole::Manager) {
                            working.insert(step_id);
                        }
                        steps.push(Box::pin(step.map(move |item| (step_id, item))));
                        yield Ok(CrewEvent::StepStarted(row));
                        continue;
                    }
                    // A step that has ended comes whole.
                    yield Ok(CrewEvent::StepStarted(row));
                    let mut step = step;
                    while let Some(item) = step.next().await {
                        match item {
                            Ok(event) => yield Ok(CrewEvent::Step { event, role, task }),
                            Err(e) => {
                                yield Err(e);
                                return;
                            }
                        }
                    }
                }
                if steps.is_empty() && queue.is_empty() && let Some(run) = ended.take() {
                    yield Ok(CrewEvent::Ended(run));
                    return;
                }
                let wake = tokio::select! {
                    biased;
                    item = steps.next(), if !steps.is_empty() => Wake::Item(item),
                    _ = signal.changed(), if ended.is_none() => Wake::Reread,
                    _ = resync.changed(), if ended.is_none() => Wake::Reread,
                    () = tokio::time::sleep(SAFETY_POLL), if ended.is_none() => Wake::Reread,
                };
                match wake {
                    Wake::Reread => continue 'read,
                    Wake::Item(None) => {}
                    Wake::Item(Some((step_id, Ok(event)))) => {
                        if event.kind.is_terminal() {
                            working.remove(&step_id);
                        }
                        let (role, task) = known.get(&step_id).copied().unwrap_or_default();
                        yield Ok(CrewEvent::Step { event, role, task });
                    }
                    Wake::Item(Some((_, Err(e)))) => {
                        yield Err(e);
                        return;
                    }
                }
            }
        }
    })
}

/// Why a subscriber woke.
enum Wake {
    /// A step's stream yielded (or ended).
    Item(Option<(Uuid, AppResult<Arc<EventRow>>)>),
    /// The crew run changed: read it again.
    Reread,
}
