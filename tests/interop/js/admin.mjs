// Loads chunkd's operator view in headless Chromium (Debian's, through
// playwright-core) and waits until one of its tables shows a text -- the
// page polls chunkd's JSON API by itself -- then records what the page
// shows and takes a screenshot.  Prints one JSON line:
// {status, tables, console, pageErrors, error}.
//
//   node admin.mjs '<json: {page, chromium, profile, timeout, table, text, screenshot}>'

import { chromium } from 'playwright-core';

const args = JSON.parse(process.argv[2]);
const out = { status: null, tables: {}, console: [], pageErrors: [], error: null };
let browser = null;

function finish(code) {
  process.stdout.write(JSON.stringify(out) + '\n');
  const close = browser ? browser.close().catch(() => {}) : Promise.resolve();
  Promise.race([close, new Promise((r) => setTimeout(r, 5000))]).then(() => process.exit(code));
}

const watchdog = setTimeout(() => { out.error = 'timed out in admin.mjs'; finish(3); }, (args.timeout || 60) * 1000);
watchdog.unref();

try {
  browser = await chromium.launch({ executablePath: args.chromium, args: ['--no-sandbox'] });
  const page = await browser.newPage();
  page.on('console', (m) => out.console.push(m.text()));
  page.on('pageerror', (e) => out.pageErrors.push(String(e)));
  const response = await page.goto(args.page);
  out.status = response.status();
  if (args.table) {
    await page.waitForFunction(([table, text]) => {
      const element = document.getElementById(table);
      return element !== null && element.textContent.includes(text);
    }, [args.table, args.text], { timeout: (args.timeout || 60) * 1000 - 5000, polling: 200 });
  }
  for (const id of ['summary', 'inProgress', 'completed', 'failed']) {
    out.tables[id] = await page.evaluate((i) => { const e = document.getElementById(i); return e ? e.textContent : null; }, id);
  }
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
  finish(0);
} catch (e) {
  out.error = String(e && e.stack || e);
  finish(1);
}
