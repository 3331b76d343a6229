// Opens a page of the interop suite in headless Chromium (Debian's, through
// playwright-core: no browser download) and runs window.runScenario(spec)
// there; prints one JSON line: {result, console, pageErrors, failed}.
//
//   node browser.mjs '<json: {page, spec, chromium, profile, directory?, timeout}>'
//
// With `directory`, that directory is handed to <input id="dir"
// webkitdirectory> the way a person picking a folder would.

import { chromium } from 'playwright-core';

const args = JSON.parse(process.argv[2]);
const out = { result: null, console: [], pageErrors: [], failed: [], error: null };
let browser = null;

function finish(code) {
  process.stdout.write(JSON.stringify(out) + '\n');
  const close = browser ? browser.close().catch(() => {}) : Promise.resolve();
  // Never wait long for a browser that will not close.
  Promise.race([close, new Promise((r) => setTimeout(r, 5000))]).then(() => process.exit(code));
}

const watchdog = setTimeout(() => { out.error = 'timed out in browser.mjs'; finish(3); }, (args.timeout || 90) * 1000);
watchdog.unref();

async function main() {
  browser = await chromium.launchPersistentContext(args.profile, {
    executablePath: args.chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
    timeout: 30000,
  });
  const page = browser.pages()[0] || await browser.newPage();
  page.on('console', (msg) => { if (out.console.length < 200) out.console.push(`${msg.type()}: ${msg.text()}`.slice(0, 500)); });
  page.on('pageerror', (err) => { out.pageErrors.push(String(err).slice(0, 1000)); });
  page.on('requestfailed', (req) => {
    if (out.failed.length < 200) out.failed.push(`${req.method()} ${req.url()}: ${req.failure() && req.failure().errorText}`);
  });
  await page.goto(args.page, { waitUntil: 'load', timeout: 30000 });
  const running = page.evaluate((spec) => window.runScenario(spec), args.spec);
  if (args.directory) {
    await page.setInputFiles('#dir', args.directory);
  }
  out.result = await running;
  finish(0);
}

main().catch((err) => { out.error = String(err && err.stack || err).slice(0, 4000); finish(2); });
