// The standard introspection queries of graphql-js — what graphql-codegen, Apollo Rover,
// Postman and Insomnia send — against Agentry, each turned back into a schema with
// buildClientSchema (which fails on anything malformed) and printed.
//
// Usage: node introspect.mjs <httpUrl>
// Prints one JSON line: for each variant, the number of types and whether the printed schema
// has the types a client needs; exits 1 with `ERROR <message>` on any failure.

import { buildClientSchema, getIntrospectionQuery, printSchema } from 'graphql';

const [url] = process.argv.slice(2);
if (!url) {
  console.error('ERROR usage: node introspect.mjs <httpUrl>');
  process.exit(1);
}

const variants = {
  default: {},
  everything: {
    descriptions: true,
    inputValueDeprecation: true,
    schemaDescription: true,
    specifiedByUrl: true,
    directiveIsRepeatable: true,
  },
};

async function main() {
  const out = {};
  for (const [name, options] of Object.entries(variants)) {
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/graphql-response+json' },
      body: JSON.stringify({ query: getIntrospectionQuery(options), operationName: 'IntrospectionQuery' }),
    });
    const body = await response.json();
    if (body.errors) {
      throw new Error(`${name}: ${JSON.stringify(body.errors)}`);
    }
    const schema = buildClientSchema(body.data);
    const sdl = printSchema(schema);
    out[name] = {
      status: response.status,
      types: Object.keys(schema.getTypeMap()).length,
      hasCrew: sdl.includes('type Crew {'),
      hasSubscription: Boolean(schema.getSubscriptionType()?.getFields().crewRunEvents),
    };
  }
  return out;
}

main().then(
  (summary) => process.stdout.write(`${JSON.stringify(summary)}\n`, () => process.exit(0)),
  (error) => process.stderr.write(`ERROR ${error?.stack ?? error}\n`, () => process.exit(1)),
);
