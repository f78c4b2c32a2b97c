// A standalone fake OpenAI provider for the benchmark (W7, W7b, W7 idle latency, W8, W9):
// `POST /v1/chat/completions` with `stream: true` answers with OpenAI Chat Completions
// server-sent events at a fixed token rate.
//
// Every token's content is `<index>@<emit time in ms>;` (the emit time is the machine's
// monotonic clock, the same clock the subscriber client reads), so a
// subscriber can compute provider-emit → client-receive latency and detect lost or reordered
// tokens without any side channel.
//
// Each stream is shaped by the request's last user message (the run's input), which may carry
// `key=value` words anywhere; its first word is the stream's tag (counted in /control/streams):
//
//   tokens=<n>     tokens to emit (default: <tokensPerStream> from the command line)
//   rate=<r>       tokens per second (default: <tokensPerSecond>; 0.1 = one token every 10 s)
//   gate=<name>    after the role chunk, wait until gate <name> is released (default: `default`;
//                  `none` = do not wait)
//   pause=<ms>     after the gate, wait this long before the first token (default 0)
//   calls=<n>      (W9) while the conversation has no tool result yet, answer with <n> calls of
//                  the `calculator` tool (OpenAI `delta.tool_calls`, `finish_reason: tool_calls`)
//                  instead of tokens; the next turn (carrying the results) streams the tokens
//
// e.g. `stream 3` (W7: the defaults), `idle 7 tokens=1 gate=idle-7 pause=250`,
// `trickle 2 1 tokens=1000 rate=0.1 gate=none`.
//
// Control endpoints:
//   POST /control/release[?gate=<name>]  releases a gate (default: `default`): waiting streams
//                                        start, later ones do not wait
//   POST /control/reset[?gate=<name>]    closes a gate again (later streams wait)
//   GET  /control/streams                {opened, waiting, gates: {name: waiting}, active: {tag: open streams}}
//
// A stream whose client goes away (a cancelled run) stops at once, also while it waits.
//
// Usage: node fake-provider.mjs <port> <tokensPerSecond> <tokensPerStream>
// Prints `LISTENING <port>` once ready.

import http from 'node:http';

const [port = '18090', rateArg = '200', countArg = '1000'] = process.argv.slice(2);
const defaultRate = Number(rateArg);
const defaultCount = Number(countArg);
// CLOCK_MONOTONIC in ms: one clock for every process on the machine. (performance.timeOrigin is
// each process's own reading of the wall clock at start, and two processes' readings were seen
// to differ by ~5 ms, which showed as negative latencies.)
const now = () => Number(process.hrtime.bigint()) / 1e6;

/** name → { released, waiters: Set<resolve> } */
const gates = new Map();
/** tag → streams open now */
const active = {};
let opened = 0;

function gate(name) {
  let g = gates.get(name);
  if (!g) {
    g = { released: false, waiters: new Set() };
    gates.set(name, g);
  }
  return g;
}

/** The stream's shape from the last user message (see the header). */
function shape(parsed) {
  const messages = Array.isArray(parsed.messages) ? parsed.messages : [];
  const user = [...messages].reverse().find((m) => m && m.role === 'user');
  let text = user?.content ?? '';
  if (Array.isArray(text)) text = text.map((part) => part?.text ?? '').join(' ');
  text = String(text);
  const o = { tag: text.trim().split(/\s+/)[0] || 'stream', count: defaultCount, rate: defaultRate, gate: 'default', pause: 0, calls: 0 };
  o.answered = messages.some((m) => m && m.role === 'tool');
  for (const [, key, value] of text.matchAll(/\b(tokens|rate|gate|pause|calls)=([\w.-]+)/g)) {
    if (key === 'calls') o.calls = Math.max(0, Math.floor(Number(value)) || 0);
    if (key === 'tokens') o.count = Math.max(0, Math.floor(Number(value)) || 0);
    else if (key === 'rate') o.rate = Number(value) > 0 ? Number(value) : defaultRate;
    else if (key === 'gate') o.gate = value;
    else if (key === 'pause') o.pause = Math.max(0, Number(value) || 0);
  }
  return o;
}

function chunk(id, model, delta, finish) {
  return `data: ${JSON.stringify({
    id,
    object: 'chat.completion.chunk',
    created: Math.floor(Date.now() / 1000),
    model,
    system_fingerprint: 'fp_bench',
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
  })}\n\n`;
}

/** W9: a turn that calls the calculator `n` times, as OpenAI streams tool calls. */
function toolTurn(res, model, n) {
  const id = `chatcmpl-bench${opened++}`;
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  res.write(chunk(id, model, { role: 'assistant', content: null }, null));
  for (let i = 0; i < n; i++) {
    const call = { index: i, id: `call_${id}_${i}`, type: 'function', function: { name: 'calculator', arguments: '' } };
    res.write(chunk(id, model, { tool_calls: [call] }, null));
    res.write(chunk(id, model, { tool_calls: [{ index: i, function: { arguments: '{"expression":"6*7"}' } }] }, null));
  }
  res.write(chunk(id, model, {}, 'tool_calls'));
  res.write(`data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created: Math.floor(Date.now() / 1000), model, choices: [], usage: { prompt_tokens: 12, completion_tokens: 7 * n, total_tokens: 12 + 7 * n } })}\n\n`);
  res.end('data: [DONE]\n\n');
}

async function stream(res, model, o) {
  const id = `chatcmpl-bench${opened++}`;
  let closed = false;
  const onClose = new Set();
  res.on('close', () => {
    closed = true;
    onClose.forEach((wake) => wake());
  });
  // Waits `ms`, or less when the client goes away.
  const sleep = (ms) =>
    new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        onClose.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      onClose.add(wake);
    });
  active[o.tag] = (active[o.tag] ?? 0) + 1;
  try {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    res.write(chunk(id, model, { role: 'assistant', content: '' }, null));
    if (o.gate !== 'none') {
      const g = gate(o.gate);
      if (!g.released) {
        await new Promise((resolve) => {
          const wake = () => {
            g.waiters.delete(wake);
            onClose.delete(wake);
            resolve();
          };
          g.waiters.add(wake);
          onClose.add(wake);
        });
      }
    }
    if (o.pause > 0 && !closed) await sleep(o.pause);
    // Emit on a fixed schedule (catching up if the event loop fell behind), not "sleep after each".
    const start = now();
    for (let i = 1; i <= o.count; i++) {
      if (closed) return;
      const due = start + ((i - 1) * 1000) / o.rate;
      const wait = due - now();
      if (wait > 1) await sleep(wait);
      if (closed || res.destroyed) return;
      res.write(chunk(id, model, { content: `${i}@${now().toFixed(3)};` }, null));
    }
    res.write(chunk(id, model, {}, 'stop'));
    res.write(
      `data: ${JSON.stringify({
        id,
        object: 'chat.completion.chunk',
        created: Math.floor(Date.now() / 1000),
        model,
        choices: [],
        usage: { prompt_tokens: 12, completion_tokens: o.count, total_tokens: 12 + o.count },
      })}\n\n`,
    );
    res.end('data: [DONE]\n\n');
  } finally {
    active[o.tag]--;
  }
}

const server = http.createServer((req, res) => {
  let body = '';
  req.on('data', (d) => (body += d));
  req.on('end', () => {
    const url = new URL(req.url, 'http://127.0.0.1');
    const gateName = url.searchParams.get('gate') || 'default';
    if (req.method === 'POST' && url.pathname === '/control/release') {
      const g = gate(gateName);
      g.released = true;
      [...g.waiters].forEach((wake) => wake());
      res.end('released');
    } else if (req.method === 'POST' && url.pathname === '/control/reset') {
      gate(gateName).released = false;
      res.end('reset');
    } else if (req.method === 'GET' && url.pathname === '/control/streams') {
      const waiting = {};
      let total = 0;
      for (const [name, g] of gates) {
        waiting[name] = g.waiters.size;
        total += g.waiters.size;
      }
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ opened, waiting: total, gates: waiting, active }));
    } else if (req.method === 'GET' && url.pathname === '/v1/models') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ object: 'list', data: [{ id: 'gpt-4o-mini', object: 'model', created: 1721172741, owned_by: 'system' }] }));
    } else if (req.method === 'POST' && url.pathname === '/v1/chat/completions') {
      let parsed;
      try {
        parsed = JSON.parse(body);
      } catch {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: 'bad json', type: 'invalid_request_error' } }));
        return;
      }
      const o = shape(parsed);
      if (o.calls > 0 && !o.answered) toolTurn(res, parsed.model ?? 'gpt-4o-mini', o.calls);
      else stream(res, parsed.model ?? 'gpt-4o-mini', o).catch((e) => console.error('stream failed', e));
    } else {
      res.writeHead(404);
      res.end();
    }
  });
});
server.listen(Number(port), '127.0.0.1', () => console.log(`LISTENING ${port}`));
