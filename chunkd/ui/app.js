// chunkd's upload page: a small tus 1.0.0 client and a Resumable.js-style
// chunker of our own, each over XMLHttpRequest (the one browser API that
// reports upload progress), talking to nothing but the server that served it.
//
// What makes an upload survive a reload or a dropped connection: each file's
// upload (its tus URL, or its Resumable.js identifier) is remembered in
// localStorage under a fingerprint of the file's name, size and modification
// time.  Picking the same file again asks the server what it holds -- a HEAD
// for tus, test GETs for the chunks -- and sends only the rest.
(function () {
  'use strict';

  const app = document.getElementById('app');
  // Paths relative to this page (so a reverse proxy may mount chunkd under a
  // prefix), the chunk size, whether tokens are used: see chunkd/page.py.
  const config = JSON.parse(app.dataset.config);
  const TUS = { 'Tus-Resumable': '1.0.0' };
  const PARALLEL = 3;
  const RETRIES = 8;

  // -- the token ---------------------------------------------------------------

  const tokenKey = 'chunkd.token';
  const authPanel = document.getElementById('auth');
  const tokenInput = document.getElementById('token');
  const authNote = document.getElementById('auth-note');

  function token() { return sessionStorage.getItem(tokenKey) || ''; }

  function authProblem(text) {
    authPanel.classList.toggle('problem', Boolean(text));
    authNote.textContent = text || (config.auth === 'required' ? 'this server needs a token' : 'optional');
  }

  if (config.auth !== 'off') {
    authPanel.hidden = false;
    tokenInput.value = token();
    tokenInput.addEventListener('input', () => {
      sessionStorage.setItem(tokenKey, tokenInput.value.trim());
      authProblem('');
    });
    authProblem(config.auth === 'required' && !token() ? 'this server needs a token: enter it first' : '');
  }

  // -- HTTP ---------------------------------------------------------------------

  class Aborted extends Error {}
  // An answer that retrying cannot change (a refused token, a file too large).
  class Fatal extends Error {}

  // One request.  Resolves with the answer whatever its status; rejects only
  // when no answer came (the connection failed) or it was aborted.
  function send(method, url, options) {
    const { headers = {}, body = null, progress = null, live = null } = options || {};
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open(method, url);
      for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, String(value));
      if (token()) xhr.setRequestHeader('Authorization', 'Bearer ' + token());
      if (progress) xhr.upload.onprogress = (event) => progress(event.loaded);
      const settle = (then) => () => { if (live) live.delete(xhr); then(); };
      xhr.onload = settle(() => resolve({
        status: xhr.status, text: xhr.responseText, header: (name) => xhr.getResponseHeader(name),
      }));
      xhr.onerror = settle(() => reject(new Error('the connection failed')));
      xhr.ontimeout = xhr.onerror;
      xhr.onabort = settle(() => reject(new Aborted('aborted')));
      if (live) live.add(xhr);
      xhr.send(body);
    });
  }

  // What a non-success answer means for the upload.
  function failure(answer) {
    const reason = (answer.text || '').trim().split('\n')[0] || 'HTTP ' + answer.status;
    if (answer.status === 401 || answer.status === 403) {
      authPanel.hidden = false;
      authProblem('token refused: ' + reason);
      return new Fatal(reason);
    }
    // 409 (the offset moved), 423 (busy), 429 and 5xx: ask again.
    if ([409, 423, 429].includes(answer.status) || answer.status >= 500) return new Error(reason);
    return new Fatal(reason);
  }

  function resolve(path) { return new URL(path, document.baseURI).href; }

  function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

  // -- what this browser remembers ----------------------------------------------------

  function storageKey(mode, file) {
    return `chunkd.upload:${mode}:${file.name}:${file.size}:${file.lastModified}`;
  }
  function recall(key) {
    try { return JSON.parse(localStorage.getItem(key)); } catch (e) { return null; }
  }
  function remember(key, value) { localStorage.setItem(key, JSON.stringify(value)); }
  function forget(key) { localStorage.removeItem(key); }

  function randomHex(bytes) {
    return Array.from(crypto.getRandomValues(new Uint8Array(bytes)),
      (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // Upload-Metadata values are base64 of UTF-8.
  function base64(text) {
    let binary = '';
    for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
    return btoa(binary);
  }

  // -- showing numbers ----------------------------------------------------------------

  function bytes(n) {
    if (n >= 1e9) return (n / 1e9).toFixed(2) + ' GB';
    if (n >= 1e6) return (n / 1e6).toFixed(1) + ' MB';
    if (n >= 1e3) return (n / 1e3).toFixed(1) + ' kB';
    return n + ' B';
  }

  function duration(seconds) {
    if (!isFinite(seconds)) return '…';
    if (seconds < 60) return Math.ceil(seconds) + ' s';
    if (seconds < 3600) return Math.floor(seconds / 60) + ' min ' + Math.ceil(seconds % 60) + ' s';
    return Math.floor(seconds / 3600) + ' h ' + Math.ceil((seconds % 3600) / 60) + ' min';
  }

  // -- one upload, whatever the protocol --------------------------------------------------

  class Upload {
    constructor(file) {
      this.file = file;
      this.key = storageKey(this.mode, file);
      this.live = new Set();       // requests in flight (aborted by pause and cancel)
      this.run = 0;                // which run of the upload loop is the current one
      this.samples = [];           // [time, bytes] over the last seconds, for the rate
      this.row = document.getElementById('upload-row').content.firstElementChild.cloneNode(true);
      this.$ = (selector) => this.row.querySelector(selector);
      this.$('.name').textContent = file.name;
      this.$('.mode').textContent = this.label;
      this.$('.pause').addEventListener('click', () => (this.paused ? this.resume() : this.pause()));
      this.$('.cancel').addEventListener('click', () => this.cancel());
      this.row.dataset.mode = this.mode;
      this.show(0);
    }

    // The loop: transfer, and on a dropped connection or a busy server wait
    // and go again -- each attempt starts from what the server says it holds.
    async start() {
      const run = ++this.run;
      this.paused = false;
      this.$('.pause').textContent = 'Pause';
      this.$('.pause').disabled = false;
      for (let attempt = 1; ; attempt++) {
        this.state('uploading');
        this.samples = [];
        try {
          const uploadId = await this.transfer();
          if (run !== this.run) return;
          this.state('checking');
          await this.finish(uploadId);
          return;
        } catch (error) {
          if (run !== this.run) return;  // paused or cancelled meanwhile
          if (error instanceof Fatal || attempt >= RETRIES) {
            this.stop('failed: ' + error.message);
            return;
          }
          const wait = Math.min(1000 * 2 ** (attempt - 1), 15000);
          this.state(`${error.message}; trying again in ${Math.round(wait / 1000)} s`);
          await sleep(wait);
          if (run !== this.run) return;
        }
      }
    }

    stop(state) {
      this.run++;
      this.paused = true;
      for (const xhr of Array.from(this.live)) xhr.abort();
      this.samples = [];  // no rate while stopped
      this.show(Number(this.row.dataset.sent));
      this.$('.pause').textContent = 'Resume';
      this.state(state);
    }

    pause() { this.stop('paused'); }

    resume() { this.start(); }

    cancel() {
      this.stop('cancelled');
      this.cancelled = true;
      forget(this.key);
      this.discard();
      this.$('.pause').disabled = true;
      this.$('.cancel').disabled = true;
    }

    discard() {}

    request(method, url, options) {
      return send(method, url, Object.assign({ live: this.live }, options));
    }

    state(text) {
      this.row.dataset.state = text.split(/[:;]/)[0];
      this.$('.state').textContent = text;
    }

    // Progress: bytes the server holds plus bytes on their way.
    show(sent) {
      const size = this.file.size;
      const now = performance.now();
      this.samples.push([now, sent]);
      while (this.samples.length > 2 && now - this.samples[0][0] > 5000) this.samples.shift();
      const [t0, b0] = this.samples[0];
      const rate = now > t0 ? (sent - b0) / ((now - t0) / 1000) : 0;
      this.$('progress').value = size ? sent / size : 1;
      this.row.dataset.sent = String(sent);
      let text = `${bytes(sent)} of ${bytes(size)}`;
      if (rate > 0 && sent < size) {
        text += ` · ${(rate / 1e6).toFixed(2)} MB/s · ${duration((size - sent) / rate)} left`;
      }
      this.$('.stats').textContent = text;
    }

    // Done: the size and sha256 as chunkd recorded them, and where to get it.
    async finish(uploadId) {
      forget(this.key);
      const answer = await this.request('GET', resolve(`${config.api}/uploads/${uploadId}`));
      if (answer.status !== 200) throw failure(answer);
      const info = JSON.parse(answer.text);
      this.row.dataset.uploadId = info.id;
      this.row.dataset.sha256 = info.sha256;
      this.$('.size').textContent = `${bytes(info.size)} (${info.size} bytes)`;
      this.$('.sha256').textContent = info.sha256;
      const link = this.$('.download');
      if (info.download) {
        link.href = info.download;
        link.textContent = info.filename || 'download';
        link.addEventListener('click', (event) => download(event, link, info.filename));
      } else {
        link.replaceWith(document.createTextNode('downloads are off on this server'));
      }
      this.$('.result').hidden = false;
      this.$('.actions').hidden = true;
      this.show(info.size);
      this.state('done');
    }
  }

  // -- tus 1.0.0 -------------------------------------------------------------------

  class TusUpload extends Upload {
    get mode() { return 'tus'; }
    get label() { return 'tus'; }

    async transfer() {
      const file = this.file;
      let url = this.url || (recall(this.key) || {}).url;
      let offset = 0;
      if (url) {
        // Where does the server stand?  Its offset, not ours, is the truth.
        const head = await this.request('HEAD', url, { headers: TUS });
        if (head.status === 200) {
          offset = parseInt(head.header('Upload-Offset'), 10);
        } else if (head.status === 404 || head.status === 410) {
          forget(this.key);  // expired or deleted: start over
          url = null;
        } else {
          throw failure(head);
        }
      }
      if (!url) {
        let metadata = 'filename ' + base64(file.name);
        if (file.type) metadata += ',filetype ' + base64(file.type);
        const created = await this.request('POST', resolve(config.tus), {
          headers: Object.assign({ 'Upload-Length': file.size, 'Upload-Metadata': metadata }, TUS),
        });
        if (created.status !== 201) throw failure(created);
        url = new URL(created.header('Location'), resolve(config.tus)).href;
        remember(this.key, { url });
      }
      this.url = url;
      this.show(offset);
      while (offset < file.size) {
        const end = Math.min(file.size, offset + config.chunkSize);
        const from = offset;
        const patched = await this.request('PATCH', url, {
          headers: Object.assign({ 'Upload-Offset': from, 'Content-Type': 'application/offset+octet-stream' }, TUS),
          body: file.slice(from, end),
          progress: (loaded) => this.show(from + loaded),
        });
        if (patched.status !== 204) throw failure(patched);
        offset = parseInt(patched.header('Upload-Offset'), 10);
        this.show(offset);
      }
      return url.replace(/\/+$/, '').split('/').pop();
    }

    discard() {
      // Termination frees the server's space at once.
      if (this.url) send('DELETE', this.url, { headers: TUS }).catch(() => {});
    }
  }

  // -- Resumable.js chunks ---------------------------------------------------------------

  class ChunkedUpload extends Upload {
    get mode() { return 'resumable'; }
    get label() { return 'Resumable.js'; }

    // Chunk n (1-based) of the file: every chunk is chunkSize bytes but the
    // last (forceChunkSize's arithmetic, which chunkd accepts).
    params(n) {
      const file = this.file;
      const size = this.chunkSize;
      const current = Math.min(file.size, n * size) - (n - 1) * size;
      return new URLSearchParams({
        resumableChunkNumber: n, resumableChunkSize: size, resumableCurrentChunkSize: current,
        resumableTotalSize: file.size, resumableType: file.type, resumableIdentifier: this.identifier,
        resumableFilename: file.name, resumableRelativePath: file.name, resumableTotalChunks: this.count,
      });
    }

    chunkURL(n) { return resolve(config.resumable) + '?' + this.params(n); }

    async transfer() {
      const file = this.file;
      if (!this.identifier) {
        const known = recall(this.key);
        // A random identifier: the upload's id is derived from it, and only
        // the page that holds it can find the upload (chunkd/page.py).
        this.identifier = known ? known.identifier : 'chunkd-ui-' + randomHex(16);
        // Bigger chunks for a file that would need more than the server's
        // most (the same size again after a reload: it depends on these alone).
        this.chunkSize = Math.max(config.chunkSize, Math.ceil(file.size / config.maxChunks));
        this.count = Math.max(Math.ceil(file.size / this.chunkSize), 1);
        this.stored = new Array(this.count + 1).fill(false);
        this.inFlight = new Map();
        this.untested = Boolean(known);
        if (!known) remember(this.key, { identifier: this.identifier });
      }
      const all = Array.from({ length: this.count }, (_, i) => i + 1);
      if (this.untested) {
        // Remembered from an earlier visit: which chunks has the server got?
        await parallel(all, async (n) => {
          const test = await this.request('GET', this.chunkURL(n));
          if (test.status === 200) this.stored[n] = this.chunkDone(test);
          else if (test.status !== 204) throw failure(test);
          this.progress();
        });
        this.untested = false;
      }
      this.progress();
      await parallel(all.filter((n) => !this.stored[n]), async (n) => {
        const chunk = file.slice((n - 1) * this.chunkSize, Math.min(file.size, n * this.chunkSize));
        const answer = await this.request('POST', this.chunkURL(n), {
          headers: { 'Content-Type': 'application/octet-stream' },
          body: chunk,
          progress: (loaded) => { this.inFlight.set(n, loaded); this.progress(); },
        }).finally(() => this.inFlight.delete(n));
        if (answer.status !== 200) throw failure(answer);
        this.stored[n] = this.chunkDone(answer);
        this.progress();
      });
      if (!this.uploadId) throw new Error('the server has every chunk but has not finished the file yet');
      return this.uploadId;
    }

    chunkDone(answer) {
      const said = JSON.parse(answer.text);
      if (said.complete) this.uploadId = said.uploadId;
      return true;
    }

    progress() {
      const size = this.chunkSize;
      let sent = 0;
      for (let n = 1; n <= this.count; n++) {
        if (this.stored[n]) sent += Math.min(this.file.size, n * size) - (n - 1) * size;
      }
      for (const loaded of this.inFlight.values()) sent += loaded;
      this.show(sent);
    }
  }

  // Run work(item) for every item, at most PARALLEL at a time; the first
  // error is thrown once the others have settled.
  async function parallel(items, work) {
    let next = 0;
    let first = null;
    async function lane() {
      while (next < items.length && !first) {
        const item = items[next++];
        try { await work(item); } catch (error) { first = first || error; }
      }
    }
    await Promise.all(Array.from({ length: Math.min(PARALLEL, items.length) }, lane));
    if (first) throw first;
  }

  // A link cannot carry a bearer token: with one, fetch the file and hand
  // the browser what came.
  async function download(event, link, filename) {
    if (!token()) return;
    event.preventDefault();
    const answer = await fetch(link.href, { headers: { Authorization: 'Bearer ' + token() } });
    if (!answer.ok) { authProblem('download refused: ' + (await answer.text()).trim()); return; }
    const url = URL.createObjectURL(await answer.blob());
    const a = document.createElement('a');
    a.href = url;
    a.download = filename || '';
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  // -- picking and dropping files ------------------------------------------------------

  const list = document.getElementById('uploads');
  const input = document.getElementById('files');
  const drop = document.getElementById('drop');
  const modes = { tus: TusUpload, resumable: ChunkedUpload };

  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    if (!config[radio.value]) {
      radio.disabled = true;
      radio.parentElement.title = 'not enabled on this server';
    }
  }
  if (!config.tus && config.resumable) document.querySelector('input[value="resumable"]').checked = true;

  function mode() { return document.querySelector('input[name="mode"]:checked').value; }

  function add(files) {
    const Kind = modes[mode()];
    for (const file of Array.from(files)) {
      if (config.maxSize && file.size > config.maxSize) {
        const upload = new Kind(file);
        list.prepend(upload.row);
        upload.stop(`failed: larger than this server's limit of ${bytes(config.maxSize)}`);
        continue;
      }
      const upload = new Kind(file);
      list.prepend(upload.row);
      upload.start();
    }
  }

  input.addEventListener('change', () => { add(input.files); input.value = ''; });
  drop.addEventListener('dragover', (event) => { event.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    add(event.dataTransfer.files);
  });
  app.dataset.ready = 'true';
})();
