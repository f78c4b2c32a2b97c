// The GraphiQL playground Agentry serves on GET /graphql, in a real browser: Debian's Chromium
// driven by playwright-core (no browser download).
//
// Usage: node graphiql.mjs <baseUrl> <accessToken> <executionId> <screenshotPath>
//
// The page loads React and GraphiQL from the server itself (embedded in the binary), so it runs
// with the network blocked: every request off the test server is refused and counts as a
// failure. The script types the token into the headers pane, runs `{ me { email } }` and a subscription to
// a finished run, and prints a JSON line with what the result pane showed; exits 1 on error.

import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';

const [baseUrl, token, executionId, screenshot] = process.argv.slice(2);
if (!baseUrl || !token || !executionId || !screenshot) {
  console.error('ERROR usage: node graphiql.mjs <baseUrl> <accessToken> <executionId> <screenshotPath>');
  process.exit(1);
}
const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
if (!existsSync(executablePath)) {
  console.error(
    `ERROR no Chromium at ${executablePath}: install Debian's package (apt-get install -y chromium) ` +
      'or set CHROMIUM_PATH',
  );
  process.exit(1);
}

const browser = await chromium.launch({
  executablePath,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const failures = [];
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const origin = new URL(baseUrl).origin;
  // The network is blocked: the page must load everything from the server itself.
  await context.route('**/*', async (route) => {
    const url = route.request().url();
    if (url.startsWith(origin)) return route.continue();
    failures.push(`off-site request: ${url}`);
    return route.abort('internetdisconnected');
  });
  page = await context.newPage();
  page.on('pageerror', (error) => failures.push(`page error: ${error.message}`));

  const response = await page.goto(`${baseUrl}/graphql`, { waitUntil: 'load' });
  if (response.status() !== 200) throw new Error(`GET /graphql answered ${response.status()}`);
  await page.waitForSelector('.graphiql-query-editor .CodeMirror', { timeout: 15_000 });

  // The headers pane: open its tab and type the token, as a person would.
  await page.click('.graphiql-editor-tools button[data-name="headers"]');
  const headers = page.locator('.graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror');
  await headers.click();
  await page.keyboard.type(JSON.stringify({ Authorization: `Bearer ${token}` }));

  const setQuery = async (text) => {
    await page.evaluate((q) => {
      document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.setValue(q);
    }, text);
    // GraphiQL re-parses the document after a debounce; it decides from that parse whether
    // the operation is a subscription (WebSocket) or not (HTTP).
    await page.waitForTimeout(1000);
  };
  const resultText = () =>
    page.evaluate(() => document.querySelector('.graphiql-response .CodeMirror').CodeMirror.getValue());
  const runAndWaitFor = async (needle) => {
    await page.click('.graphiql-execute-button');
    await page.waitForFunction(
      (n) => document.querySelector('.graphiql-response .CodeMirror')?.CodeMirror.getValue().includes(n),
      needle,
      { timeout: 15_000 },
    );
    return resultText();
  };

  await setQuery('{ me { email } }');
  const me = await runAndWaitFor('"email"');
  await setQuery(
    `subscription { executionEvents(executionId: "${executionId}") { sequence kind delta } }`,
  );
  const subscription = await runAndWaitFor('COMPLETED');
  await page.screenshot({ path: screenshot, fullPage: true });
  const storedHeaders = await page.evaluate(() => localStorage.getItem('graphiql:headers'));
  process.stdout.write(`${JSON.stringify({ me, subscription, storedHeaders, failures })}\n`);
} catch (error) {
  // Keep what the page showed, for the CI log and the artefact.
  const shown = await page
    ?.evaluate(() => document.querySelector('.graphiql-response .CodeMirror')?.CodeMirror.getValue())
    .catch(() => null);
  await page?.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  process.stderr.write(
    `ERROR ${error?.stack ?? error}\nresult pane: ${shown}\nfailures: ${JSON.stringify(failures)}\n`,
  );
  process.exitCode = 1;
} finally {
  await browser.close();
}
