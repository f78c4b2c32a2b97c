//! W7/W7b subscriber load: `agentry-bench-fanout <wsUrl> <tokensFile> <connections>
//! <executionId,...> <tokensPerRun>` (env `BENCH_FANOUT_DEADLINE_MS`, default 120000).
//!
//! Opens `<connections>` WebSockets speaking graphql-transport-ws (the protocol of graphql-ws,
//! which the suite's Node client and Apollo Client use), each subscribed to `executionEvents` of
//! every listed run. Prints `READY <n>` once every subscription is registered (a `{ __typename }`
//! sent after them has completed: the server handles a socket's messages in order) and has
//! received its first event (the run's STARTED, from the server's replay). Then it waits for
//! every subscription to complete and prints one JSON line in the same shape as
//! `bench/js/subscribers.mjs fanout`: delivered messages and tokens, lost / reordered events and
//! tokens, failed subscriptions, socket closes, and the emit → receive latency of every token
//! (from the `<index>@<emit ms>;` tokens of bench/js/fake-provider.mjs, CLOCK_MONOTONIC ms).
//!
//! Why a Rust client: W7 runs the server and its 1,000 subscribers on the same two cores. The
//! Node client (graphql-ws over ws, one process per core) used 11 CPU seconds per 10 s of
//! streaming against Agentry's 7, so the generator, not the server, set the tail. This client
//! does the same checks on a single-threaded runtime per process with far less CPU.
//! `BENCH_FANOUT_CLIENT=node bench/run` still measures with the Node client.

use std::{
    borrow::Cow,
    cell::{Cell, RefCell},
    collections::BTreeMap,
    io::Write,
    rc::Rc,
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json, value::RawValue};
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::{
    Message, client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig,
};

const EVENTS: &str =
    "subscription($id: ID!) { executionEvents(executionId: $id) { sequence kind delta data } }";
const TERMINAL: [&str; 4] = ["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"];
/// Sockets being opened at once.
const OPEN_CONCURRENCY: usize = 100;
/// graphql-transport-ws's answer to a `ping`.
const PONG: &str = r#"{"type":"pong"}"#;
/// Each socket's read buffer (the server's is 4 KiB as well).
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// The id of the `{ __typename }` round trip that shows a socket's subscriptions are registered.
const REGISTERED_ID: &str = "registered";
// Latency histogram, as the Node client's: 0.1 ms buckets up to 10 s, then 10 ms buckets up to
// 10 minutes (the last bucket holds anything beyond).
const FINE_BUCKETS: usize = 100_000;
const COARSE_BUCKETS: usize = 59_000;

/// CLOCK_MONOTONIC in ms: the clock the fake provider stamps tokens with (Node's
/// `process.hrtime`), one clock for every process on the machine.
fn now_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}

fn bucket(latency_ms: f64) -> usize {
    let fine = (latency_ms * 10.0).round();
    if fine < FINE_BUCKETS as f64 {
        return fine.max(0.0) as usize;
    }
    (FINE_BUCKETS + ((latency_ms - 10_000.0) / 10.0).floor() as usize)
        .min(FINE_BUCKETS + COARSE_BUCKETS - 1)
}

fn bucket_ms(b: usize) -> f64 {
    if b < FINE_BUCKETS {
        b as f64 / 10.0
    } else {
        10_000.0 + (b - FINE_BUCKETS) as f64 * 10.0
    }
}

/// What every connection of this process adds to (one thread: no locks, no atomics).
struct Totals {
    messages: u64,
    tokens: u64,
    lost_events: u64,
    reordered_events: u64,
    lost_tokens: u64,
    reordered_tokens: u64,
    errors: u64,
    /// Subscriptions refused or ended by an error, or completed without a COMPLETED event.
    failed_subscriptions: u64,
    first_error: Option<Value>,
    terminal: Option<Value>,
    /// Socket closes seen while measuring, by close code.
    closes: BTreeMap<String, u64>,
    counting: bool,
    hist: Vec<u32>,
    samples: u64,
    max_latency: f64,
    first_token_at: f64,
    last_at: f64,
}

impl Totals {
    fn new() -> Self {
        Totals {
            messages: 0,
            tokens: 0,
            lost_events: 0,
            reordered_events: 0,
            lost_tokens: 0,
            reordered_tokens: 0,
            errors: 0,
            failed_subscriptions: 0,
            first_error: None,
            terminal: None,
            closes: BTreeMap::new(),
            counting: true,
            hist: vec![0; FINE_BUCKETS + COARSE_BUCKETS],
            samples: 0,
            max_latency: 0.0,
            first_token_at: f64::INFINITY,
            last_at: 0.0,
        }
    }

    /// Nearest-rank percentile of the latency histogram (ms).
    fn percentile(&self, p: f64) -> f64 {
        let rank = (p / 100.0 * self.samples as f64).ceil() as u64;
        let mut seen = 0u64;
        for (b, &n) in self.hist.iter().enumerate() {
            seen += u64::from(n);
            if n > 0 && seen >= rank {
                return bucket_ms(b);
            }
        }
        f64::NAN
    }
}

/// Progress the main task waits on.
struct Progress {
    registered: Cell<usize>,
    live: Cell<usize>,
    done: Cell<usize>,
    changed: Notify,
}

impl Progress {
    fn bump(&self, counter: &Cell<usize>) {
        counter.set(counter.get() + 1);
        self.changed.notify_one();
    }
}

/// One subscription's view of its run.
#[derive(Default)]
struct Sub {
    last_sequence: u64,
    last_token: u64,
    saw_terminal: bool,
    live: bool,
    done: bool,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    id: Option<&'a str>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Next<'a> {
    #[serde(borrow)]
    data: Option<Data<'a>>,
    #[serde(borrow)]
    errors: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(rename = "executionEvents", borrow)]
    event: Option<Event<'a>>,
}

#[derive(Deserialize)]
struct Event<'a> {
    sequence: u64,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    delta: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Calls `each(index, emitted)` for every `<index>@<emit ms>;` token of a delta, and `bad` for
/// anything else between the `;`s.
fn for_each_token(delta: &str, mut each: impl FnMut(u64, f64), mut bad: impl FnMut(&str)) {
    for token in delta.split(';').filter(|t| !t.is_empty()) {
        let parsed = token.split_once('@').and_then(|(index, emitted)| {
            let emitted: f64 = emitted.parse().ok().filter(|e: &f64| e.is_finite())?;
            Some((index.parse().ok()?, emitted))
        });
        match parsed {
            Some((index, emitted)) => each(index, emitted),
            None => bad(token),
        }
    }
}

fn fail(message: String) -> ! {
    eprintln!("{message}");
    std::process::exit(1);
}

struct Shared {
    url: String,
    runs: Vec<String>,
    tokens_per_run: u64,
    totals: RefCell<Totals>,
    progress: Progress,
    opening: Semaphore,
}

impl Shared {
    /// A subscription has ended (completed, errored or its socket closed): tokens it never got
    /// are lost, and it failed unless it saw COMPLETED (`failed` forces a failure).
    fn end(&self, sub: &mut Sub, failed: bool, error: Option<Value>) {
        if sub.done {
            return;
        }
        sub.done = true;
        self.make_live(sub);
        let mut t = self.totals.borrow_mut();
        if sub.last_token < self.tokens_per_run {
            t.lost_tokens += self.tokens_per_run - sub.last_token;
        }
        if failed || !sub.saw_terminal {
            t.errors += 1;
            t.failed_subscriptions += 1;
        }
        if let Some(error) = error {
            eprintln!("ERROR fanout subscription {error}");
            t.first_error.get_or_insert(error);
        }
        drop(t);
        self.progress.bump(&self.progress.done);
    }

    fn make_live(&self, sub: &mut Sub) {
        if !sub.live {
            sub.live = true;
            self.progress.bump(&self.progress.live);
        }
    }

    /// One `next` of a run's subscription.
    fn next(&self, sub: &mut Sub, payload: &RawValue, at: f64) {
        let mut t = self.totals.borrow_mut();
        let event = match serde_json::from_str::<Next>(payload.get()) {
            Ok(Next {
                data: Some(Data { event: Some(event) }),
                errors: None,
            }) => event,
            Ok(Next { errors, .. }) => {
                t.errors += 1;
                let detail = errors
                    .and_then(|e| serde_json::from_str(e.get()).ok())
                    .unwrap_or_else(|| json!("no data"));
                t.first_error.get_or_insert(detail);
                return;
            }
            Err(e) => {
                t.errors += 1;
                t.first_error
                    .get_or_insert(json!(format!("unreadable event: {e}")));
                return;
            }
        };
        self.make_live(sub);
        t.messages += 1;
        t.last_at = at;
        // Sequences must be 1, 2, 3 … with no gap, duplicate or reversal.
        if event.sequence > sub.last_sequence + 1 {
            t.lost_events += event.sequence - sub.last_sequence - 1;
        }
        if event.sequence <= sub.last_sequence {
            t.reordered_events += 1;
        }
        sub.last_sequence = sub.last_sequence.max(event.sequence);
        if TERMINAL.contains(&event.kind.as_ref()) {
            sub.saw_terminal = event.kind == "COMPLETED";
            if !sub.saw_terminal {
                let data = event
                    .data
                    .and_then(|d| serde_json::from_str::<Value>(d.get()).ok());
                t.terminal = Some(json!({ "kind": event.kind, "data": data }));
            }
        }
        let (Some(delta), "OUTPUT_DELTA") = (event.delta, event.kind.as_ref()) else {
            return;
        };
        let t = &mut *t;
        let mut unreadable = None;
        for_each_token(
            &delta,
            |index, emitted| {
                if index > sub.last_token + 1 {
                    t.lost_tokens += index - sub.last_token - 1;
                }
                if index <= sub.last_token {
                    t.reordered_tokens += 1;
                }
                sub.last_token = sub.last_token.max(index);
                t.tokens += 1;
                t.first_token_at = t.first_token_at.min(emitted);
                let latency = at - emitted;
                t.max_latency = t.max_latency.max(latency);
                t.hist[bucket(latency)] += 1;
                t.samples += 1;
            },
            |token| {
                unreadable.get_or_insert_with(|| token.to_owned());
            },
        );
        // A token the client cannot read is an error, never silently skipped.
        if let Some(token) = unreadable {
            t.errors += 1;
            t.first_error
                .get_or_insert(json!(format!("unreadable token {token:?}")));
        }
    }
}

/// One socket: opens it, subscribes to every run, then reads until every subscription ended.
async fn connection(shared: Rc<Shared>, token: String) {
    let permit = shared.opening.acquire().await;
    let mut request = shared
        .url
        .as_str()
        .into_client_request()
        .unwrap_or_else(|e| fail(format!("bad url {}: {e}", shared.url)));
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    // A small read buffer: tungstenite zero-fills the buffer's whole capacity before every
    // read, and at its default 128 KiB that memset was 41% of this client's CPU.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), false)
        .await
        .unwrap_or_else(|e| fail(format!("connecting {}: {e}", shared.url)));
    let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } });
    if let Err(e) = ws.send(Message::text(init.to_string())).await {
        fail(format!("connection_init: {e}"));
    }
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                match serde_json::from_str::<Envelope>(text.as_str()).map(|e| e.kind) {
                    Ok("connection_ack") => break,
                    Ok("ping") => {
                        let _ = ws.send(Message::text(PONG)).await;
                    }
                    Ok("pong") => {}
                    _ => fail(format!("no connection_ack: {:?}", text.as_str())),
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => fail(format!("no connection_ack: {other:?}")),
        }
    }
    drop(permit);

    let mut subs: Vec<Sub> = shared.runs.iter().map(|_| Sub::default()).collect();
    for (i, run) in shared.runs.iter().enumerate() {
        let subscribe = json!({ "id": i.to_string(), "type": "subscribe", "payload": { "query": EVENTS, "variables": { "id": run } } });
        if let Err(e) = ws.send(Message::text(subscribe.to_string())).await {
            fail(format!("subscribe: {e}"));
        }
    }
    let registered = json!({ "id": REGISTERED_ID, "type": "subscribe", "payload": { "query": "{ __typename }" } });
    if let Err(e) = ws.send(Message::text(registered.to_string())).await {
        fail(format!("subscribe: {e}"));
    }

    // Read until the socket ends. Once every subscription has ended the socket stays open (as
    // the Node client keeps it until it prints its figures), so that closing it is not part of
    // the measurement, but a close the server makes meanwhile is still counted.
    let mut registered = false;
    loop {
        let frame = ws.next().await;
        let at = now_ms();
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(close))) => {
                // No code in the close frame reads as 1005, as in a browser or `ws`.
                let (code, reason) = close.map_or((1005, String::new()), |c| {
                    (u16::from(c.code), c.reason.to_string())
                });
                return closed(&shared, &mut subs, registered, code, &reason);
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return closed(&shared, &mut subs, registered, 1006, &e.to_string()),
            // Ended without a close frame: 1006 (abnormal closure), as `ws` reports it.
            None => return closed(&shared, &mut subs, registered, 1006, ""),
        };
        let Ok(envelope) = serde_json::from_str::<Envelope>(text.as_str()) else {
            return violation(&shared, &mut subs, registered, "unreadable message");
        };
        let id = match (envelope.kind, envelope.id) {
            ("ping", _) => {
                let _ = ws.send(Message::text(PONG)).await;
                continue;
            }
            ("pong", _) => continue,
            (_, Some(id)) => id,
            (_, None) => return violation(&shared, &mut subs, registered, "message without an id"),
        };
        if id == REGISTERED_ID {
            match envelope.kind {
                "complete" => {
                    registered = true;
                    shared.progress.bump(&shared.progress.registered);
                }
                "error" => fail(format!("{{ __typename }} failed: {}", text.as_str())),
                _ => {}
            }
            continue;
        }
        let Some(sub) = id.parse::<usize>().ok().and_then(|i| subs.get_mut(i)) else {
            continue;
        };
        // graphql-ws drops messages for a subscription it has finished with.
        if sub.done {
            continue;
        }
        match (envelope.kind, envelope.payload) {
            ("next", Some(payload)) => shared.next(sub, payload, at),
            ("complete", _) => shared.end(sub, false, None),
            ("error", payload) => {
                let detail = payload.and_then(|p| serde_json::from_str(p.get()).ok());
                shared.end(sub, true, Some(detail.unwrap_or(Value::Null)));
            }
            _ => return violation(&shared, &mut subs, registered, "unexpected message"),
        }
    }
}

/// The socket ended (a close frame from the server, an error, or its end). Before its
/// subscriptions were registered that fails the whole client (exit 1, as the Node client's
/// rejected promise does); after, the close is counted while measuring and every subscription
/// still open on it fails.
fn closed(shared: &Shared, subs: &mut [Sub], registered: bool, code: u16, reason: &str) {
    if !registered {
        fail(format!(
            "socket closed before its subscriptions were registered: {code} {reason}"
        ));
    }
    if shared.totals.borrow().counting {
        *shared
            .totals
            .borrow_mut()
            .closes
            .entry(code.to_string())
            .or_default() += 1;
    }
    let detail = json!({ "code": code, "reason": reason });
    for sub in subs.iter_mut().filter(|s| !s.done) {
        shared.end(sub, true, Some(detail.clone()));
    }
}

/// A message graphql-ws would refuse: like it, the client closes the socket with 4400, which
/// fails every subscription still open on it.
fn violation(shared: &Shared, subs: &mut [Sub], registered: bool, what: &str) {
    closed(shared, subs, registered, 4400, what);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, tokens_file, connections, runs, tokens_per_run] = args.as_slice() else {
        fail("usage: agentry-bench-fanout <wsUrl> <tokensFile> <connections> <executionId,...> <tokensPerRun>".to_owned());
    };
    let tokens: Vec<String> = std::fs::read_to_string(tokens_file)
        .unwrap_or_else(|e| fail(format!("{tokens_file}: {e}")))
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let connections: usize = connections
        .parse()
        .unwrap_or_else(|e| fail(format!("connections: {e}")));
    let deadline_ms: u64 = std::env::var("BENCH_FANOUT_DEADLINE_MS")
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|e| fail(format!("BENCH_FANOUT_DEADLINE_MS {v:?}: {e}")))
        })
        .unwrap_or(120_000);
    let shared = Rc::new(Shared {
        url: url.clone(),
        runs: runs.split(',').map(str::to_owned).collect(),
        tokens_per_run: tokens_per_run
            .parse()
            .unwrap_or_else(|e| fail(format!("tokensPerRun: {e}"))),
        totals: RefCell::new(Totals::new()),
        progress: Progress {
            registered: Cell::new(0),
            live: Cell::new(0),
            done: Cell::new(0),
            changed: Notify::new(),
        },
        opening: Semaphore::new(OPEN_CONCURRENCY),
    });
    if tokens.is_empty() {
        fail(format!("{tokens_file}: no tokens"));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("runtime: {e}")));
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        for i in 0..connections {
            tokio::task::spawn_local(connection(shared.clone(), tokens[i % tokens.len()].clone()));
        }
        let subscriptions = connections * shared.runs.len();
        let progress = &shared.progress;
        while progress.registered.get() < connections || progress.live.get() < subscriptions {
            progress.changed.notified().await;
        }
        println!("READY {connections}");
        let _ = std::io::stdout().flush();
        let finished = tokio::time::timeout(Duration::from_millis(deadline_ms), async {
            while progress.done.get() < subscriptions {
                progress.changed.notified().await;
            }
        })
        .await
        .is_ok();
        let mut t = shared.totals.borrow_mut();
        t.counting = false;
        let seconds = (t.last_at - t.first_token_at) / 1000.0;
        let mut result = json!({
            "closes": t.closes,
            "connections": connections,
            "runs": shared.runs.len(),
            "subscriptions": subscriptions,
            "finished": finished,
            "messages": t.messages,
            "tokens": t.tokens,
            "lostEvents": t.lost_events,
            "reorderedEvents": t.reordered_events,
            "lostTokens": t.lost_tokens,
            "reorderedTokens": t.reordered_tokens,
            "errors": t.errors,
            "failedSubscriptions": t.failed_subscriptions,
            "seconds": seconds,
            "messagesPerSecond": t.messages as f64 / seconds,
            "tokensPerSecond": t.tokens as f64 / seconds,
            "latencyMs": {
                "p50": t.percentile(50.0),
                "p90": t.percentile(90.0),
                "p99": t.percentile(99.0),
                "max": t.max_latency,
            },
            "firstTokenAt": t.first_token_at,
            "lastAt": t.last_at,
            "histogram": t.hist.iter().enumerate().filter(|(_, n)| **n > 0).map(|(b, n)| [b as u64, u64::from(*n)]).collect::<Vec<_>>(),
        });
        if let Some(e) = t.first_error.take() {
            result["firstError"] = e;
        }
        if let Some(terminal) = t.terminal.take() {
            result["terminal"] = terminal;
        }
        println!("{result}");
        let _ = std::io::stdout().flush();
        std::process::exit(0);
    });
}
