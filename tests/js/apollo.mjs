// Apollo Client 4 against Agentry, the way a web or Node app sets it up (README "Clients").
//
// Usage: node apollo.mjs <httpUrl> <wsUrl> <providerSecret>
//
// Signs up, creates an OpenAI key and an agent, runs it, and receives the streamed events over
// the split HTTP/WebSocket link (GraphQLWsLink + graphql-ws, the token in connectionParams).
// Then runs a two-task crew and receives every event of both tasks through one crewRunEvents
// subscription.
// Then checks automatic persisted queries (POST, then GET) with PersistedQueryLink. Prints one
// JSON summary line on stdout and exits 0; on any error prints `ERROR <message>` on stderr and
// exits 1 (2 after 30 s).

import { createHash } from 'node:crypto';
import { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } from '@apollo/client';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions';
import { PersistedQueryLink } from '@apollo/client/link/persisted-queries';
import { getMainDefinition } from '@apollo/client/utilities';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const [httpUrl, wsUrl, providerSecret] = process.argv.slice(2);
if (!httpUrl || !wsUrl || !providerSecret) {
  console.error('ERROR usage: node apollo.mjs <httpUrl> <wsUrl> <providerSecret>');
  process.exit(1);
}
setTimeout(() => {
  console.error('ERROR timeout: apollo.mjs did not finish within 30 s');
  process.exit(2);
}, 30_000).unref();

// --- README snippet: the split link -------------------------------------------------------
let accessToken = null; // set after sign-up / login

/** Adds `Authorization: Bearer <token>` to every HTTP operation once signed in. */
const authLink = new ApolloLink((operation, forward) => {
  operation.setContext(({ headers = {} }) => ({
    headers: accessToken ? { ...headers, authorization: `Bearer ${accessToken}` } : headers,
  }));
  return forward(operation);
});

const httpLink = new HttpLink({ uri: httpUrl });

const wsLink = new GraphQLWsLink(
  createClient({
    url: wsUrl,
    webSocketImpl: WebSocket, // only in Node; browsers have WebSocket
    // Read when the socket opens (lazily, on the first subscription), so it carries the token.
    connectionParams: () => ({ Authorization: `Bearer ${accessToken}` }),
    retryAttempts: 0, // a test should fail, not reconnect
  }),
);

const link = ApolloLink.split(
  ({ query }) => {
    const definition = getMainDefinition(query);
    return definition.kind === 'OperationDefinition' && definition.operation === 'subscription';
  },
  wsLink,
  authLink.concat(httpLink),
);

const client = new ApolloClient({ link, cache: new InMemoryCache() });
// --- end of snippet -------------------------------------------------------------------------

const REGISTER = gql`
  mutation Register($input: RegisterInput!) {
    register(input: $input) { accessToken user { id email } }
  }
`;
const CREATE_KEY = gql`
  mutation CreateKey($input: CreateApiKeyInput!) { createApiKey(input: $input) { id maskedKey } }
`;
const CREATE_AGENT = gql`
  mutation CreateAgent($input: CreateAgentInput!) { createAgent(input: $input) { id name } }
`;
const EXECUTE = gql`
  mutation Execute($agentId: ID!, $input: String!) {
    executeAgent(agentId: $agentId, input: $input) { id status }
  }
`;
const EVENTS = gql`
  subscription Events($id: ID!) {
    executionEvents(executionId: $id) { sequence kind delta }
  }
`;

const CREATE_CREW = gql`
  mutation CreateCrew($input: CrewInput!) { createCrew(input: $input) { id inputs } }
`;
const RUN_CREW = gql`
  mutation RunCrew($crewId: ID!, $inputs: JSON) { runCrew(crewId: $crewId, inputs: $inputs) { id status } }
`;
const CREW_EVENTS = gql`
  subscription CrewEvents($id: ID!) {
    crewRunEvents(crewRunId: $id) {
      kind executionId role taskIndex
      event { sequence kind delta }
      crewRun { status output }
    }
  }
`;

/** Collects a subscription's items until it completes. */
function collect(query, variables, field) {
  return new Promise((resolve, reject) => {
    const received = [];
    client.subscribe({ query, variables }).subscribe({
      next: (result) => {
        if (result.error) reject(result.error);
        else received.push(result.data[field]);
      },
      error: reject,
      complete: () => resolve(received),
    });
  });
}

/** A two-task crew (the typist, then an editor), run and followed over one subscription. */
async function crew(keyId, typistId) {
  const { data: editor } = await client.mutate({
    mutation: CREATE_AGENT,
    variables: {
      input: { name: 'Editor', role: 'an editor', goal: 'tidy the text you are given', apiKeyId: keyId, model: 'gpt-4o-mini' },
    },
  });
  const { data: created } = await client.mutate({
    mutation: CREATE_CREW,
    variables: {
      input: {
        name: 'Type and edit',
        agentIds: [typistId, editor.createAgent.id],
        tasks: [
          { description: 'Type a sentence about {topic}', expectedOutput: 'one sentence', agentId: typistId },
          { description: 'Tidy the sentence', expectedOutput: 'one tidy sentence', agentId: editor.createAgent.id },
        ],
      },
    },
  });
  const { data: started } = await client.mutate({
    mutation: RUN_CREW,
    variables: { crewId: created.createCrew.id, inputs: { topic: 'foxes' } },
  });
  const crewRunId = started.runCrew.id;
  const items = await collect(CREW_EVENTS, { id: crewRunId }, 'crewRunEvents');
  return { crewRunId, inputs: created.createCrew.inputs, items };
}

async function main() {
  const email = `apollo-${Date.now()}@example.com`;
  const { data: registered } = await client.mutate({
    mutation: REGISTER,
    variables: {
      input: { email, password: 'violet kettle harbour 93 drift', displayName: 'Apollo Client' },
    },
  });
  accessToken = registered.register.accessToken;

  const { data: key } = await client.mutate({
    mutation: CREATE_KEY,
    variables: { input: { name: 'OpenAI', provider: 'OPENAI', secret: providerSecret } },
  });
  const { data: agent } = await client.mutate({
    mutation: CREATE_AGENT,
    variables: {
      input: {
        name: 'Typist',
        role: 'a fast typist',
        goal: 'type the sentence you are given',
        apiKeyId: key.createApiKey.id,
        model: 'gpt-4o-mini',
      },
    },
  });
  const { data: run } = await client.mutate({
    mutation: EXECUTE,
    variables: { agentId: agent.createAgent.id, input: 'Type: the quick brown fox jumps' },
  });
  const executionId = run.executeAgent.id;

  const events = await new Promise((resolve, reject) => {
    const received = [];
    client.subscribe({ query: EVENTS, variables: { id: executionId } }).subscribe({
      next: (result) => {
        if (result.error) reject(result.error);
        else received.push(result.data.executionEvents);
      },
      error: reject,
      complete: () => resolve(received),
    });
  });

  const crewRun = await crew(key.createApiKey.id, agent.createAgent.id);
  const apq = await persistedQueries(email);
  await client.clearStore();
  wsLink.client.dispose();
  return { email, executionId, events, crew: crewRun, apq };
}

/** Automatic persisted queries through PersistedQueryLink, recording what went over the wire. */
async function persistedQueries(email) {
  const wire = [];
  const recordingFetch = async (url, init) => {
    const response = await fetch(url, init);
    const body = await response.clone().json();
    const parsed = new URL(url);
    const sent = init.body ? JSON.parse(init.body) : {};
    wire.push({
      method: init.method ?? 'GET',
      status: response.status,
      sentQuery: Boolean(sent.query ?? parsed.searchParams.get('query')),
      sentHash: Boolean(
        sent.extensions?.persistedQuery ?? parsed.searchParams.get('extensions')?.includes('sha256Hash'),
      ),
      code: body.errors?.[0]?.extensions?.code ?? null,
      email: body.data?.me?.email ?? null,
    });
    return response;
  };
  const sha256 = (text) => createHash('sha256').update(text).digest('hex');
  const apqClient = (useGETForHashedQueries) =>
    new ApolloClient({
      cache: new InMemoryCache(),
      link: ApolloLink.from([
        new PersistedQueryLink({ sha256, useGETForHashedQueries }),
        authLink,
        new HttpLink({ uri: httpUrl, fetch: recordingFetch }),
      ]),
    });
  // A different document per method, so the GET round trip starts from an unknown hash too.
  const documents = { post: gql`query MeByPost { me { email } }`, get: gql`query MeByGet { me { email } }` };
  const results = {};
  for (const [name, useGET] of [['post', false], ['get', true]]) {
    const ME = documents[name];
    const start = wire.length;
    const first = apqClient(useGET);
    const again = apqClient(useGET);
    const a = await first.query({ query: ME, fetchPolicy: 'network-only' });
    const b = await again.query({ query: ME, fetchPolicy: 'network-only' });
    if (a.data.me.email !== email || b.data.me.email !== email) {
      throw new Error(`APQ ${name}: wrong data ${JSON.stringify([a.data, b.data])}`);
    }
    results[name] = wire.slice(start);
  }
  return results;
}

main().then(
  (summary) => {
    process.stdout.write(`${JSON.stringify(summary)}\n`, () => process.exit(0));
  },
  (error) => {
    process.stderr.write(`ERROR ${error?.stack ?? error}\n`, () => process.exit(1));
  },
);
