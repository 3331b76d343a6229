// Drives chunkd's own upload page (served by chunkd at its ui.path) in
// headless Chromium (Debian's, through playwright-core), the way a person
// would: pick a file, click Pause and Resume, reload mid-upload and pick the
// file again.  Every request the page makes is recorded (method, URL, the
// tus headers, and the step of the scenario it was sent in).  Prints one
// JSON line: {requests, snapshots, downloads, console, pageErrors, error}.
//
//   node page.mjs '<json: {page, chromium, profile, timeout, actions: [...]}>'
//
// Actions, in order (the upload row acted on is the newest one):
//   {do: 'phase', name}              label the requests sent from now on
//   {do: 'throttle', bytesPerSecond} the browser's upload bandwidth (DevTools network emulation)
//   {do: 'offline', value}           drop the browser's network (true) or bring it back (false)
//   {do: 'mode', value}              pick 'tus' or 'resumable'
//   {do: 'token', value}             type a bearer token into the page
//   {do: 'pick', path}               choose a file through <input type=file>
//   {do: 'waitSent', bytes}          until the row shows at least that many bytes sent
//   {do: 'waitState', state}         until the row's state is that ('done', 'failed', ...)
//   {do: 'click', button}            click the row's button ('pause', 'cancel')
//   {do: 'sleep', ms}
//   {do: 'reload'}                   reload the page (the throttle is applied again)
//   {do: 'snapshot'}                 record what the row and the page show
//   {do: 'download'}                 fetch the row's download link as the page would; its sha256
//   {do: 'screenshot', path}

import { chromium } from 'playwright-core';

const args = JSON.parse(process.argv[2]);
const out = { requests: [], snapshots: [], downloads: [], console: [], pageErrors: [], failed: [], error: null };
let browser = null;

function finish(code) {
  process.stdout.write(JSON.stringify(out) + '\n');
  const close = browser ? browser.close().catch(() => {}) : Promise.resolve();
  Promise.race([close, new Promise((r) => setTimeout(r, 5000))]).then(() => process.exit(code));
}

const watchdog = setTimeout(() => { out.error = 'timed out in page.mjs at ' + current; finish(3); }, (args.timeout || 90) * 1000);
watchdog.unref();
let current = 'start';
let phase = 'start';
let throttle = null;
let offline = false;
let cdp = null;

const row = '#uploads > li:first-child';

async function applyThrottle(page) {
  if (throttle === null && !offline) return;
  // One DevTools session for the page (it outlives reloads): conditions
  // set through a second session would not replace the first's.
  if (cdp === null) {
    cdp = await page.context().newCDPSession(page);
  }
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', {
    offline, latency: 0, downloadThroughput: -1, uploadThroughput: throttle === null ? -1 : throttle,
  });
}

async function rowValue(page, expression) {
  return page.$eval(row, expression).catch(() => null);
}

async function main() {
  browser = await chromium.launchPersistentContext(args.profile, {
    executablePath: args.chromium,
    headless: true,
    viewport: { width: 1000, height: 760 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
    timeout: 30000,
  });
  const page = browser.pages()[0] || await browser.newPage();
  page.on('console', (msg) => { if (out.console.length < 200) out.console.push(`${msg.type()}: ${msg.text()}`.slice(0, 500)); });
  page.on('pageerror', (err) => { out.pageErrors.push(String(err).slice(0, 1000)); });
  const records = new Map();
  page.on('request', (req) => {
    const h = req.headers();
    const rec = { method: req.method(), url: req.url(), phase, offset: h['upload-offset'] ?? null,
      authorization: h.authorization ?? null, status: null };
    records.set(req, rec);
    out.requests.push(rec);
  });
  page.on('requestfinished', async (req) => {
    const response = await req.response().catch(() => null);
    if (records.has(req) && response) records.get(req).status = response.status();
  });
  page.on('requestfailed', (req) => {
    if (out.failed.length < 200) out.failed.push(`${req.method()} ${req.url()}: ${req.failure() && req.failure().errorText}`);
  });
  await page.goto(args.page, { waitUntil: 'load', timeout: 30000 });
  await page.waitForSelector('#app[data-ready="true"]', { state: 'attached', timeout: 10000 });

  for (const action of args.actions) {
    current = JSON.stringify(action);
    switch (action.do) {
      case 'phase':
        phase = action.name;
        break;
      case 'throttle':
        throttle = action.bytesPerSecond;
        await applyThrottle(page);
        break;
      case 'offline':
        offline = action.value;
        await applyThrottle(page);
        break;
      case 'mode':
        await page.check(`input[name="mode"][value="${action.value}"]`);
        break;
      case 'token':
        await page.fill('#token', action.value);
        break;
      case 'pick':
        await page.setInputFiles('#files', action.path);
        await page.waitForSelector(row, { timeout: 5000 });
        break;
      case 'waitSent':
        await page.waitForFunction(([selector, n]) => {
          const li = document.querySelector(selector);
          return li && Number(li.dataset.sent) >= n;
        }, [row, action.bytes], { timeout: 60000, polling: 20 });
        break;
      case 'waitState':
        await page.waitForFunction(([selector, state]) => {
          const li = document.querySelector(selector);
          return li && li.dataset.state === state;
        }, [row, action.state], { timeout: 60000, polling: 50 });
        break;
      case 'click':
        await page.click(`${row} button.${action.button}`);
        break;
      case 'sleep':
        await new Promise((r) => setTimeout(r, action.ms));
        break;
      case 'reload':
        await page.reload({ waitUntil: 'load', timeout: 30000 });
        await page.waitForSelector('#app[data-ready="true"]', { state: 'attached', timeout: 10000 });
        await applyThrottle(page);
        break;
      case 'snapshot':
        out.snapshots.push(await page.evaluate((selector) => {
          const li = document.querySelector(selector);
          const auth = document.getElementById('auth');
          const text = (q) => (li && li.querySelector(q) ? li.querySelector(q).textContent : null);
          return {
            rows: document.querySelectorAll('#uploads > li').length,
            state: li ? li.dataset.state : null,
            stateText: text('.state'),
            sent: li ? Number(li.dataset.sent) : null,
            uploadId: li ? li.dataset.uploadId || null : null,
            sha256: text('.sha256'),
            size: text('.size'),
            stats: text('.stats'),
            download: li && li.querySelector('.download') ? li.querySelector('.download').href : null,
            authShown: !auth.hidden,
            authNote: document.getElementById('auth-note').textContent,
            remembered: Object.keys(localStorage).filter((k) => k.startsWith('chunkd.upload:')).length,
          };
        }, row));
        break;
      case 'download':
        out.downloads.push(await page.evaluate(async (selector) => {
          const link = document.querySelector(selector + ' .download');
          const token = sessionStorage.getItem('chunkd.token');
          const answer = await fetch(link.href, { headers: token ? { Authorization: 'Bearer ' + token } : {} });
          const body = await answer.arrayBuffer();
          const digest = await crypto.subtle.digest('SHA-256', body);
          return {
            status: answer.status, size: body.byteLength,
            disposition: answer.headers.get('content-disposition'),
            sha256: Array.from(new Uint8Array(digest)).map((b) => b.toString(16).padStart(2, '0')).join(''),
          };
        }, row));
        break;
      case 'screenshot':
        await page.screenshot({ path: action.path, fullPage: true });
        break;
      default:
        throw new Error('unknown action ' + action.do);
    }
  }
  finish(0);
}

main().catch((err) => { out.error = `${current}: ${String(err && err.stack || err)}`.slice(0, 4000); finish(2); });
