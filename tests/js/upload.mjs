// Apollo Client 4 with apollo-upload-client's UploadHttpLink (README "Files"): uploads a file
// the way a web app's <input type="file"> would, then runs an agent that reads it.
//
// Usage: node upload.mjs <httpUrl> <accessToken> <agentId>
//
// Prints one JSON line {file, executionId} on stdout and exits 0; on any error prints
// `ERROR <message>` on stderr and exits 1 (2 after 30 s).

import { ApolloClient, InMemoryCache, gql } from '@apollo/client';
import UploadHttpLink from 'apollo-upload-client/UploadHttpLink.mjs';

const [httpUrl, accessToken, agentId] = process.argv.slice(2);
if (!httpUrl || !accessToken || !agentId) {
  console.error('ERROR usage: node upload.mjs <httpUrl> <accessToken> <agentId>');
  process.exit(1);
}
setTimeout(() => {
  console.error('ERROR timeout: upload.mjs did not finish within 30 s');
  process.exit(2);
}, 30_000).unref();

// --- README snippet: uploads -----------------------------------------------------------------
const client = new ApolloClient({
  link: new UploadHttpLink({
    uri: httpUrl,
    // A multipart POST must carry a header that forces a CORS preflight (CSRF protection).
    headers: { authorization: `Bearer ${accessToken}`, 'Apollo-Require-Preflight': 'true' },
  }),
  cache: new InMemoryCache(),
});
const UPLOAD = gql`
  mutation Upload($file: Upload!) {
    uploadFile(file: $file) { id name contentType size downloadPath }
  }
`;
// In a browser: the File from an <input type="file">.
const file = new File(['Quarterly revenue: 42 million.\n'], 'quarterly.txt', { type: 'text/plain' });
// --- end of snippet --------------------------------------------------------------------------

try {
  const uploaded = await client.mutate({ mutation: UPLOAD, variables: { file } });
  if (uploaded.error || !uploaded.data) throw uploaded.error ?? new Error('no data');
  const run = await client.mutate({
    mutation: gql`
      mutation Run($agentId: ID!, $input: String!) { executeAgent(agentId: $agentId, input: $input) { id } }
    `,
    variables: { agentId, input: 'What does quarterly.txt say?' },
  });
  if (run.error || !run.data) throw run.error ?? new Error('no data');
  console.log(JSON.stringify({ file: uploaded.data.uploadFile, executionId: run.data.executeAgent.id }));
  process.exit(0);
} catch (e) {
  console.error(`ERROR ${e?.message ?? e} ${JSON.stringify(e?.errors ?? e?.graphQLErrors ?? '')}`);
  process.exit(1);
}
