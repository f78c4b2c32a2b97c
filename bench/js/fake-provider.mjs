// A standalone fake OpenAI provider for the benchmark (W7): `POST /v1/chat/completions` with
// `stream: true` answers with OpenAI Chat Completions server-sent events at a fixed token rate.
//
// Every token's content is `<index>@<emit time in ms>;` (the emit time is
// performance.timeOrigin + performance.now(), the same clock the subscriber client reads), so a
// subscriber can compute provider-emit → client-receive latency and detect lost or reordered
// tokens without any side channel.
//
// Streams wait, after the role chunk, until `POST /control/release` is called, so every
// subscriber can be connected before the first token is emitted.
//
// Usage: node fake-provider.mjs <port> <tokensPerSecond> <tokensPerStream>
// Prints `LISTENING <port>` once ready.

import http from 'node:http';
import { performance } from 'node:perf_hooks';

const [port = '18090', rateArg = '200', countArg = '1000'] = process.argv.slice(2);
const rate = Number(rateArg);
const count = Number(countArg);
const now = () => performance.timeOrigin + performance.now();

let released = false;
const waiting = [];
let opened = 0;

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

async function stream(res, model) {
  const id = `chatcmpl-bench${opened++}`;
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  res.write(chunk(id, model, { role: 'assistant', content: '' }, null));
  if (!released) await new Promise((resolve) => waiting.push(resolve));
  // Emit on a fixed schedule (catching up if the event loop fell behind), not "sleep after each".
  const start = now();
  for (let i = 1; i <= count; i++) {
    const due = start + ((i - 1) * 1000) / rate;
    const wait = due - now();
    if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait));
    if (res.destroyed) return;
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
      usage: { prompt_tokens: 12, completion_tokens: count, total_tokens: 12 + count },
    })}\n\n`,
  );
  res.end('data: [DONE]\n\n');
}

const server = http.createServer((req, res) => {
  let body = '';
  req.on('data', (d) => (body += d));
  req.on('end', () => {
    if (req.method === 'POST' && req.url === '/control/release') {
      released = true;
      waiting.splice(0).forEach((resolve) => resolve());
      res.end('released');
    } else if (req.method === 'POST' && req.url === '/control/reset') {
      released = false;
      res.end('reset');
    } else if (req.method === 'GET' && req.url === '/control/streams') {
      res.end(JSON.stringify({ opened, waiting: waiting.length }));
    } else if (req.method === 'GET' && req.url === '/v1/models') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ object: 'list', data: [{ id: 'gpt-4o-mini', object: 'model', created: 1721172741, owned_by: 'system' }] }));
    } else if (req.method === 'POST' && req.url === '/v1/chat/completions') {
      let parsed;
      try {
        parsed = JSON.parse(body);
      } catch {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: 'bad json', type: 'invalid_request_error' } }));
        return;
      }
      stream(res, parsed.model ?? 'gpt-4o-mini');
    } else {
      res.writeHead(404);
      res.end();
    }
  });
});
server.listen(Number(port), '127.0.0.1', () => console.log(`LISTENING ${port}`));
