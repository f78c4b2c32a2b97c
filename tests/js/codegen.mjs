// graphql-codegen (client preset) against a running Agentry, the way a frontend team generates
// its types: the schema by introspection from the server's URL, typed documents for a few
// operations, then `tsc --noEmit --strict` over the generated code and a file that uses it.
//
// Usage: node codegen.mjs <httpUrl>   (writes into tests/js/.codegen/, which git ignores)
// Prints one JSON line (the generated files, the operations typed) and exits 0; on any error
// prints `ERROR <message>` and exits 1.

import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generate } from '@graphql-codegen/cli';

const [url] = process.argv.slice(2);
if (!url) {
  console.error('ERROR usage: node codegen.mjs <httpUrl>');
  process.exit(1);
}
const here = dirname(fileURLToPath(import.meta.url));
// Inside tests/js, so the generated code resolves its imports from tests/js/node_modules.
const out = join(here, '.codegen');

async function main() {
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  // The operations a frontend would write, in a .ts file codegen scans for graphql() calls.
  const app = join(out, 'app.ts');
  writeFileSync(
    app,
    `import { graphql } from './gql';
import type { ResultOf, VariablesOf } from '@graphql-typed-document-node/core';

export const Me = graphql(\`query Me { me { id email usage(groupBy: [DAY]) { total { cost } } } }\`);
export const RunCrew = graphql(\`mutation RunCrew($crewId: ID!, $inputs: JSON) { runCrew(crewId: $crewId, inputs: $inputs) { id status } }\`);
export const Events = graphql(\`subscription Events($id: ID!) { crewRunEvents(crewRunId: $id) { kind taskIndex event { sequence delta } } }\`);

// Typed: these lines fail to compile if the generated types are wrong.
const vars: VariablesOf<typeof RunCrew> = { crewId: 'c', inputs: { topic: 'otters' } };
type Events = ResultOf<typeof Events>;
const kind: Events['crewRunEvents']['kind'] = 'STEP_STARTED';
type MeResult = ResultOf<typeof Me>;
const cost: string | undefined = ({} as MeResult).me?.usage.total.cost;
export { vars, kind, cost };
`,
  );
  const files = await generate(
    {
      schema: url,
      documents: [app],
      generates: { [join(out, 'gql') + '/']: { preset: 'client' } },
      silent: true,
    },
    true,
  );
  writeFileSync(
    join(out, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        strict: true, noEmit: true, target: 'es2022', module: 'esnext', moduleResolution: 'bundler',
        skipLibCheck: true,
      },
      include: ['app.ts', 'gql/*.ts'],
    }),
  );
  execFileSync(join(here, 'node_modules', '.bin', 'tsc'), ['-p', join(out, 'tsconfig.json')], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return { generated: files.map((f) => f.filename.split('/').pop()), gql: readdirSync(join(out, 'gql')) };
}

main().then(
  (summary) => process.stdout.write(`${JSON.stringify(summary)}\n`, () => process.exit(0)),
  (error) => {
    const detail = error?.stdout ? `${error.stdout}${error.stderr}` : (error?.stack ?? error);
    process.stderr.write(`ERROR ${detail}\n`, () => process.exit(1));
  },
);
