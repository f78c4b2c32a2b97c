// The `graphql-http` server audit suite (GraphQL over HTTP conformance) against a server.
//
// Usage: node audit.mjs <httpUrl>
//
// Prints one line per audit (`<status> <id> <name>`), a table of the SHOULD/MAY audits the
// server does not follow, and a summary line `AUDIT total=… ok=… warn=… error=…`. Exits 1 if any
// MUST audit fails (status `error`), 0 otherwise.

import { auditServer } from 'graphql-http';

const [url] = process.argv.slice(2);
if (!url) {
  console.error('usage: node audit.mjs <httpUrl>');
  process.exit(1);
}

const results = await auditServer({ url });
const count = (status) => results.filter((r) => r.status === status).length;
for (const r of results) {
  console.log(`${r.status.padEnd(5)} ${r.id} ${r.name}`);
}
const level = (name) => name.split(' ')[0];
const warnings = results.filter((r) => r.status === 'warn');
if (warnings.length) {
  console.log('\nSHOULD/MAY audits not followed:');
  console.log('| id | level | audit | reason |');
  console.log('|---|---|---|---|');
  for (const r of warnings) {
    console.log(`| ${r.id} | ${level(r.name)} | ${r.name} | ${String(r.reason).replaceAll('\n', ' ')} |`);
  }
}
for (const r of results.filter((r) => r.status === 'error')) {
  console.log(`\nMUST failure ${r.id} ${r.name}: ${r.reason}`);
}
const must = results.filter((r) => level(r.name) === 'MUST');
const should = results.filter((r) => level(r.name) === 'SHOULD');
const may = results.filter((r) => level(r.name) === 'MAY');
const passed = (list) => list.filter((r) => r.status === 'ok').length;
console.log(
  `\nAUDIT total=${results.length} ok=${count('ok')} warn=${count('warn')} error=${count('error')} ` +
    `MUST=${passed(must)}/${must.length} SHOULD=${passed(should)}/${should.length} MAY=${passed(may)}/${may.length}`,
);
process.exit(count('error') > 0 ? 1 : 0);
