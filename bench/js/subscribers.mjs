// Subscription load for the benchmark, built on graphql-ws over ws (one WebSocket per client,
// as a browser or a Node service would open them).
//
//   node subscribers.mjs idle   <wsUrl> <tokensFile> <connections>
//     W6: opens <connections> sockets, each with one idle `executionUpdates` subscription.
//     Prints `READY <n>` once every socket is acknowledged and subscribed, then keeps them open
//     until stdin closes or a line arrives; prints `CLOSED` and exits.
//
//   node subscribers.mjs fanout <wsUrl> <tokensFile> <connections> <executionId,...> <tokensPerRun>
//     W7: opens <connections> sockets; each subscribes to `executionEvents` of every listed run.
//     Prints `READY <n>` when all are subscribed and each has received its first event (the
//     run's STARTED, from the server's replay), then waits for every subscription to complete
//     and prints one JSON line with delivered messages, rates, latency percentiles (provider emit
//     → client receive, from the `<index>@<emitMs>;` tokens of bench/js/fake-provider.mjs) and
//     lost / reordered / duplicated events and tokens, failed subscriptions and socket closes.
//     (W7 and W7b.)
//
//   node subscribers.mjs single <wsUrl> <tokensFile> <tokensPerRun>
//     W7 idle latency: opens one socket and prints `READY 1`; then for every execution id read
//     from stdin subscribes to its `executionEvents`, prints `SUBSCRIBED` once the subscription
//     is registered, and when it completes prints one JSON line with the emit → receive latency
//     of every token and lost / reordered counts. Exits when stdin closes.
//
// <tokensFile> holds access tokens, one per line; sockets use them round-robin.

import fs from 'node:fs';
import readline from 'node:readline';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const [mode, url, tokensFile, connectionsArg, runsArg, tokensPerRunArg] = process.argv.slice(2);
const TERMINAL = ['COMPLETED', 'FAILED', 'CANCELLED', 'TIMED_OUT'];
const EVENTS = 'subscription($id: ID!) { executionEvents(executionId: $id) { sequence kind delta data } }';
const tokens = fs.readFileSync(tokensFile, 'utf8').split('\n').filter(Boolean);
const connections = Number(connectionsArg);
// CLOCK_MONOTONIC in ms: one clock for every process on the machine. (performance.timeOrigin is
// each process's own reading of the wall clock at start, and two processes' readings were seen
// to differ by ~5 ms, which showed as negative latencies.)
const now = () => Number(process.hrtime.bigint()) / 1e6;
const OPEN_CONCURRENCY = 100; // sockets being opened at once
const DEADLINE_MS = Number(process.env.BENCH_FANOUT_DEADLINE_MS ?? 120_000);

/**
 * Calls `each(index, emitted)` for every `<index>@<emit ms>;` token of a delta. Parsed by hand,
 * without splitting into arrays of strings: the fan-out client reads ~800k tokens a second on a
 * core it shares with the server, and its own allocations would otherwise be what it measures.
 */
function forEachToken(delta, each) {
  const n = delta.length;
  let i = 0;
  while (i < n) {
    let index = 0;
    let c = delta.charCodeAt(i);
    while (c !== 64 /* @ */ && i < n) {
      index = index * 10 + (c - 48);
      c = delta.charCodeAt(++i);
    }
    i++; // '@'
    let whole = 0;
    let frac = 0;
    let scale = 1;
    let dot = false;
    for (; i < n; i++) {
      c = delta.charCodeAt(i);
      if (c === 59 /* ; */) break;
      if (c === 46 /* . */) dot = true;
      else if (dot) {
        frac = frac * 10 + (c - 48);
        scale *= 10;
      } else whole = whole * 10 + (c - 48);
    }
    i++; // ';'
    each(index, whole + frac / scale);
  }
}

const clients = [];
/** Socket closes seen while measuring, by close code (our own dispose at the end is not counted). */
const closes = {};
let counting = true;

/** Opens one graphql-ws client and resolves once the server acknowledged connection_init. */
function open(i) {
  return new Promise((resolve, reject) => {
    const client = createClient({
      url,
      webSocketImpl: WebSocket,
      lazy: false,
      retryAttempts: 0,
      keepAlive: 0,
      connectionParams: { Authorization: `Bearer ${tokens[i % tokens.length]}` },
      on: {
        connected: () => resolve(client),
        closed: (e) => {
          if (counting) closes[e?.code ?? 'unknown'] = (closes[e?.code ?? 'unknown'] ?? 0) + 1;
          reject(new Error(`closed ${e?.code} ${e?.reason}`));
        },
      },
      onNonLazyError: reject,
    });
    clients.push(client);
  });
}

/** Opens `n` clients, at most OPEN_CONCURRENCY at a time. */
async function openAll(n) {
  const opened = new Array(n);
  let next = 0;
  async function worker() {
    while (next < n) {
      const i = next++;
      opened[i] = await open(i);
    }
  }
  await Promise.all(Array.from({ length: Math.min(OPEN_CONCURRENCY, n) }, worker));
  return opened;
}

// Latency histogram: 0.1 ms buckets up to 10 s, then 10 ms buckets up to 10 minutes (the last
// bucket holds anything beyond).
const FINE_BUCKETS = 100_000;
const COARSE_BUCKETS = 59_000;
const newHistogram = () => new Uint32Array(FINE_BUCKETS + COARSE_BUCKETS);
function bucket(latencyMs) {
  const fine = Math.round(latencyMs * 10);
  if (fine < FINE_BUCKETS) return Math.max(0, fine);
  return Math.min(FINE_BUCKETS + COARSE_BUCKETS - 1, FINE_BUCKETS + Math.floor((latencyMs - 10_000) / 10));
}
const bucketMs = (b) => (b < FINE_BUCKETS ? b / 10 : 10_000 + (b - FINE_BUCKETS) * 10);

/** Nearest-rank percentile of a latency histogram (ms). */
function percentile(hist, total, p) {
  const rank = Math.ceil((p / 100) * total);
  let seen = 0;
  for (let b = 0; b < hist.length; b++) {
    seen += hist[b];
    if (seen >= rank) return bucketMs(b);
  }
  return NaN;
}

/** The non-empty buckets of a histogram as [[bucket, count], …]. */
function sparse(hist) {
  const out = [];
  for (let b = 0; b < hist.length; b++) if (hist[b]) out.push([b, hist[b]]);
  return out;
}

async function idle() {
  const opened = await openAll(connections);
  // Subscribe, then round-trip a query on every socket: the server processes a socket's messages
  // in order, so once the query answers, the subscription before it is registered.
  await Promise.all(
    opened.map(async (client) => {
      client.subscribe({ query: 'subscription { executionUpdates { id status } }' }, {
        next: () => {},
        error: (e) => console.error('ERROR idle subscription', JSON.stringify(e)),
        complete: () => {},
      });
      await new Promise((resolve, reject) =>
        client.subscribe({ query: '{ __typename }' }, { next: () => {}, error: reject, complete: resolve }),
      );
    }),
  );
  console.log(`READY ${opened.length}`);
  const rl = readline.createInterface({ input: process.stdin });
  await new Promise((resolve) => {
    rl.once('line', resolve);
    rl.once('close', resolve);
  });
  await Promise.all(opened.map((c) => c.dispose()));
  console.log('CLOSED');
  process.exit(0);
}

async function fanout() {
  const runs = runsArg.split(',');
  const tokensPerRun = Number(tokensPerRunArg);
  const opened = await openAll(connections);
  const hist = newHistogram();
  let samples = 0;
  let maxLatency = 0;
  const stats = {
    messages: 0, tokens: 0, lostEvents: 0, reorderedEvents: 0, lostTokens: 0, reorderedTokens: 0, errors: 0,
    // Subscriptions refused or ended by an error, or completed without a COMPLETED event.
    failedSubscriptions: 0,
  };
  let firstTokenAt = Infinity;
  let lastAt = 0;
  const done = [];
  const subscribedAll = [];
  // Live: each subscription has received its first event (the run's STARTED, stored before
  // anyone subscribes, so it comes from the server's replay): the server has checked the run,
  // registered the subscription and caught it up. Only then is the provider released, so the
  // figures measure the fan-out, not 4,000 subscriptions being set up at once.
  const liveAll = [];
  for (const client of opened) {
    for (const run of runs) {
      let lastSequence = 0;
      let lastToken = 0;
      let sawTerminal = false;
      let live;
      liveAll.push(new Promise((resolve) => (live = resolve)));
      done.push(
        new Promise((resolve) => {
          client.subscribe(
            { query: EVENTS, variables: { id: run } },
            {
              next: ({ data, errors }) => {
                const at = now();
                if (errors || !data) {
                  stats.errors++;
                  stats.firstError ??= errors ?? 'no data';
                  return;
                }
                const event = data.executionEvents;
                live();
                stats.messages++;
                lastAt = at;
                // Sequences must be 1, 2, 3 … with no gap, duplicate or reversal.
                if (event.sequence > lastSequence + 1) stats.lostEvents += event.sequence - lastSequence - 1;
                if (event.sequence <= lastSequence) stats.reorderedEvents++;
                lastSequence = Math.max(lastSequence, event.sequence);
                if (TERMINAL.includes(event.kind)) {
                  sawTerminal = event.kind === 'COMPLETED';
                  if (!sawTerminal) stats.terminal = { kind: event.kind, data: event.data };
                }
                if (event.kind !== 'OUTPUT_DELTA' || !event.delta) return;
                forEachToken(event.delta, (index, emitted) => {
                  if (index > lastToken + 1) stats.lostTokens += index - lastToken - 1;
                  if (index <= lastToken) stats.reorderedTokens++;
                  lastToken = Math.max(lastToken, index);
                  stats.tokens++;
                  firstTokenAt = Math.min(firstTokenAt, emitted);
                  const latency = at - emitted;
                  maxLatency = Math.max(maxLatency, latency);
                  hist[bucket(latency)]++;
                  samples++;
                });
              },
              error: (e) => {
                live();
                stats.errors++;
                stats.failedSubscriptions++;
                const detail = e?.code !== undefined ? { code: e.code, reason: e.reason } : e;
                stats.firstError ??= detail;
                console.error('ERROR fanout subscription', JSON.stringify(detail));
                // Tokens never delivered are lost too.
                if (lastToken < tokensPerRun) stats.lostTokens += tokensPerRun - lastToken;
                resolve();
              },
              complete: () => {
                live();
                // Tokens never delivered before the end are lost too.
                if (lastToken < tokensPerRun) stats.lostTokens += tokensPerRun - lastToken;
                if (!sawTerminal) {
                  stats.errors++;
                  stats.failedSubscriptions++;
                }
                resolve();
              },
            },
          );
        }),
      );
    }
    // Registered once a query sent after the subscriptions answers (messages are in order).
    subscribedAll.push(
      new Promise((resolve, reject) =>
        client.subscribe({ query: '{ __typename }' }, { next: () => {}, error: reject, complete: resolve }),
      ),
    );
  }
  await Promise.all(subscribedAll);
  await Promise.all(liveAll);
  console.log(`READY ${opened.length}`);
  const finished = await Promise.race([
    Promise.all(done).then(() => true),
    new Promise((resolve) => setTimeout(() => resolve(false), DEADLINE_MS)),
  ]);
  counting = false;
  const seconds = (lastAt - firstTokenAt) / 1000;
  const result = {
    closes,
    connections: opened.length,
    runs: runs.length,
    subscriptions: opened.length * runs.length,
    finished,
    ...stats,
    seconds,
    messagesPerSecond: stats.messages / seconds,
    tokensPerSecond: stats.tokens / seconds,
    latencyMs: {
      p50: percentile(hist, samples, 50),
      p90: percentile(hist, samples, 90),
      p99: percentile(hist, samples, 99),
      max: maxLatency,
    },
    // For bench/run to merge the figures of several client processes: first token emitted and
    // last message received (CLOCK_MONOTONIC ms) and the sparse histogram [[bucket, count], …].
    firstTokenAt,
    lastAt,
    histogram: sparse(hist),
  };
  // Written in full before exiting: stdout to a pipe is asynchronous in Node, and
  // process.exit() would cut a long line (the histogram) at the pipe's 64 KiB.
  await new Promise((resolve) => process.stdout.write(`${JSON.stringify(result)}\n`, resolve));
  await Promise.all(opened.map((c) => c.dispose()));
  process.exit(0);
}


async function single() {
  const tokensPerRun = Number(connectionsArg);
  const [client] = await openAll(1);
  console.log('READY 1');
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const run = line.trim();
    if (!run) continue;
    const r = { run, latencies: [], tokens: 0, lostEvents: 0, reorderedEvents: 0, lostTokens: 0, reorderedTokens: 0, errors: 0, terminal: null };
    let lastSequence = 0;
    let lastToken = 0;
    const done = new Promise((resolve) => {
      client.subscribe(
        { query: EVENTS, variables: { id: run } },
        {
          next: ({ data, errors }) => {
            const at = now();
            if (errors || !data) {
              r.errors++;
              r.firstError ??= errors ?? 'no data';
              return;
            }
            const event = data.executionEvents;
            if (event.sequence > lastSequence + 1) r.lostEvents += event.sequence - lastSequence - 1;
            if (event.sequence <= lastSequence) r.reorderedEvents++;
            lastSequence = Math.max(lastSequence, event.sequence);
            if (TERMINAL.includes(event.kind)) r.terminal = event.kind;
            if (event.kind !== 'OUTPUT_DELTA' || !event.delta) return;
            forEachToken(event.delta, (index, emitted) => {
              if (index > lastToken + 1) r.lostTokens += index - lastToken - 1;
              if (index <= lastToken) r.reorderedTokens++;
              lastToken = Math.max(lastToken, index);
              r.tokens++;
              r.latencies.push(Math.round((at - emitted) * 1000) / 1000);
            });
          },
          error: (e) => {
            r.errors++;
            r.firstError ??= e?.code !== undefined ? { code: e.code, reason: e.reason } : e;
            resolve();
          },
          complete: resolve,
        },
      );
    });
    try {
      await new Promise((resolve, reject) =>
        client.subscribe({ query: '{ __typename }' }, { next: () => {}, error: reject, complete: resolve }),
      );
    } catch (e) {
      console.log(`FAILED ${JSON.stringify(e)}`);
      continue;
    }
    console.log('SUBSCRIBED');
    r.finished = await Promise.race([
      done.then(() => true),
      new Promise((resolve) => setTimeout(() => resolve(false), DEADLINE_MS)),
    ]);
    if (lastToken < tokensPerRun) r.lostTokens += tokensPerRun - lastToken;
    console.log(JSON.stringify(r));
  }
  counting = false;
  await client.dispose();
  process.exit(0);
}

if (mode === 'idle') await idle();
else if (mode === 'fanout') await fanout();
else if (mode === 'single') await single();
else {
  console.error('usage: node subscribers.mjs idle|fanout|single …');
  process.exit(1);
}
