// The legacy `subscriptions-transport-ws` client (the `graphql-ws` subprotocol older Apollo
// setups still use) subscribing to one run's events.
//
// Usage: node legacy.mjs <wsUrl> <accessToken> <executionId>
//
// Prints each event as a JSON line, then `COMPLETE`, and exits 0; on error prints
// `ERROR <message>` on stderr and exits 1 (2 after 20 s).

import { SubscriptionClient } from 'subscriptions-transport-ws';
import WebSocket from 'ws';

const [url, token, executionId] = process.argv.slice(2);
if (!url || !token || !executionId) {
  console.error('ERROR usage: node legacy.mjs <wsUrl> <accessToken> <executionId>');
  process.exit(1);
}
const exit = (code) => process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
setTimeout(() => {
  process.stderr.write('ERROR timeout: the subscription did not finish within 20 s\n');
  exit(2);
}, 20_000).unref();

const client = new SubscriptionClient(
  url,
  {
    reconnect: false,
    connectionParams: { Authorization: `Bearer ${token}` },
    connectionCallback: (error) => {
      if (error) {
        process.stderr.write(`ERROR connection refused: ${JSON.stringify(error)}\n`);
        exit(1);
      }
    },
  },
  WebSocket, // the `ws` package; it speaks the `graphql-ws` subprotocol
);

client
  .request({
    query: `subscription ($id: ID!) { executionEvents(executionId: $id) { sequence kind delta } }`,
    variables: { id: executionId },
  })
  .subscribe({
    next: (result) => {
      if (result.errors?.length) {
        process.stderr.write(`ERROR ${result.errors.map((e) => e.message).join('; ')}\n`);
        exit(1);
        return;
      }
      const e = result.data.executionEvents;
      process.stdout.write(`${JSON.stringify({ sequence: e.sequence, kind: e.kind, delta: e.delta })}\n`);
    },
    error: (error) => {
      process.stderr.write(`ERROR ${JSON.stringify(error?.message ?? error)}\n`);
      exit(1);
    },
    complete: () => {
      process.stdout.write('COMPLETE\n');
      client.close();
      exit(0);
    },
  });
