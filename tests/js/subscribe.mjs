// Subscribes to one run's events with a real JavaScript GraphQL client: `graphql-ws` (the
// graphql-transport-ws protocol) over the `ws` package, as a Node service would.
//
// Usage: node subscribe.mjs <wsUrl> <accessToken> <executionId> [after]
//
// Prints each event as one JSON line {"sequence":..,"kind":..,"delta":..} on stdout, then
// `COMPLETE` and exits 0 when the server completes the subscription. On any error (GraphQL errors,
// a refused connection_init, a closed socket) prints `ERROR <message>` on stderr and exits 1.
// Exits 2 if the subscription has not finished within 20 s.

import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const HARD_TIMEOUT_MS = 20_000;

const [url, token, executionId, afterArg] = process.argv.slice(2);
if (!url || !token || !executionId) {
  console.error('ERROR usage: node subscribe.mjs <wsUrl> <accessToken> <executionId> [after]');
  process.exit(1);
}
const variables = { id: executionId };
if (afterArg !== undefined) {
  if (!/^\d+$/.test(afterArg)) {
    console.error(`ERROR after must be a non-negative integer, got ${afterArg}`);
    process.exit(1);
  }
  variables.after = Number(afterArg);
}

let exiting = false;

/** Flushes stdout and stderr, then exits with `code` (only the first call counts). */
function exit(code) {
  if (exiting) return;
  exiting = true;
  process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
}

/** A readable message for whatever graphql-ws rejected with. */
function describe(error) {
  if (Array.isArray(error)) {
    // The GraphQL errors of an `error` message, or of a `next` payload.
    return error.map((e) => e?.message ?? JSON.stringify(e)).join('; ');
  }
  if (error && typeof error === 'object') {
    if ('code' in error && 'reason' in error) {
      // A CloseEvent: the server (or the network) closed the socket.
      return `socket closed ${error.code}: ${error.reason}`;
    }
    if (error instanceof Error) return error.message;
    // A WebSocket ErrorEvent from `ws` (e.g. connection refused).
    if (error.error instanceof Error) return error.error.message;
    if (typeof error.message === 'string') return error.message;
  }
  return JSON.stringify(error);
}

function fail(error) {
  process.stderr.write(`ERROR ${describe(error)}\n`);
  exit(1);
}

const timer = setTimeout(() => {
  process.stderr.write(`ERROR timeout: the subscription did not finish within ${HARD_TIMEOUT_MS} ms\n`);
  exit(2);
}, HARD_TIMEOUT_MS);

const client = createClient({
  url,
  webSocketImpl: WebSocket,
  connectionParams: { Authorization: `Bearer ${token}` },
  // Fail instead of reconnecting: a retry would hide a dropped socket (and resubscribe from the
  // start), and graphql-ws retries 4403 Forbidden by default.
  retryAttempts: 0,
  shouldRetry: () => false,
});

const query = `subscription ($id: ID!, $after: Int) {
  executionEvents(executionId: $id, after: $after) {
    executionId sequence kind delta data at
  }
}`;

try {
  for await (const result of client.iterate({ query, variables })) {
    if (result.errors?.length) {
      fail(result.errors);
      break;
    }
    const event = result.data?.executionEvents;
    if (!event) {
      fail(new Error(`a result without executionEvents: ${JSON.stringify(result)}`));
      break;
    }
    process.stdout.write(
      `${JSON.stringify({ sequence: event.sequence, kind: event.kind, delta: event.delta })}\n`,
    );
  }
  if (!exiting) {
    clearTimeout(timer);
    process.stdout.write('COMPLETE\n');
    await client.dispose();
    exit(0);
  }
} catch (error) {
  fail(error);
}
