// Verifies webhook deliveries the way a receiver would, with the `standardwebhooks` package
// (the Standard Webhooks reference implementation): `node verify-webhook.mjs <file.json>`, where
// the file holds [{secret, headers, body}]. Prints one line per delivery: "verified <type>", or
// "rejected: <reason>". A copy of each delivery with one byte of its body changed must be
// rejected, or the script fails.
import { readFileSync } from "node:fs";
import { Webhook } from "standardwebhooks";

const deliveries = JSON.parse(readFileSync(process.argv[2], "utf8"));
let failed = false;
for (const { secret, headers, body } of deliveries) {
  const hook = new Webhook(secret);
  try {
    const payload = hook.verify(body, headers);
    console.log(`verified ${payload.type}`);
  } catch (e) {
    console.log(`rejected: ${e.message}`);
  }
  const tampered = body.replace(/"type":"/, '"type":"x');
  try {
    hook.verify(tampered, headers);
    console.error("a tampered body passed verification");
    failed = true;
  } catch {
    // expected
  }
}
process.exit(failed ? 1 : 0);
