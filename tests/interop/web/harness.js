// In-page instrumentation shared by the interop pages: every XHR the
// upload libraries make is recorded (method, URL, form fields, request
// headers, status, the phase of the scenario it was sent in), and files are
// built from random bytes with their sha256.
(function () {
  'use strict';
  const log = [];
  let phase = 'start';
  const open = XMLHttpRequest.prototype.open;
  const send = XMLHttpRequest.prototype.send;
  const setRequestHeader = XMLHttpRequest.prototype.setRequestHeader;

  XMLHttpRequest.prototype.open = function (method, url) {
    this._rec = { method: String(method).toUpperCase(), url: new URL(String(url), location.href).href, phase,
      headers: {}, status: null, form: null, bodySize: null, body: null };
    return open.apply(this, arguments);
  };
  XMLHttpRequest.prototype.setRequestHeader = function (name, value) {
    if (this._rec) this._rec.headers[name] = String(value);
    return setRequestHeader.apply(this, arguments);
  };
  XMLHttpRequest.prototype.send = function (body) {
    const rec = this._rec;
    if (rec) {
      rec.sentAt = performance.now();
      if (body instanceof FormData) {
        rec.form = {};
        for (const [key, value] of body.entries()) {
          rec.form[key] = typeof value === 'string' ? value : { blob: value.size, filename: value.name };
        }
      } else if (body && typeof body.size === 'number') {
        rec.bodySize = body.size;
      } else if (body && typeof body.byteLength === 'number') {
        rec.bodySize = body.byteLength;
      } else if (typeof body === 'string') {
        rec.body = body.slice(0, 500);
      }
      log.push(rec);
      // readystatechange to DONE comes before load, so the status is
      // recorded before the library hears of the answer.
      const settle = () => {
        if (this.readyState !== 4 || rec.doneAt !== undefined) return;
        rec.status = this.status;
        rec.response = (this.responseType === '' || this.responseType === 'text') ? String(this.responseText || '').slice(0, 300) : null;
        rec.doneAt = performance.now();
      };
      this.addEventListener('readystatechange', settle);
      this.addEventListener('loadend', settle);
      this.addEventListener('abort', () => { rec.aborted = true; });
    }
    return send.apply(this, arguments);
  };

  async function sha256(blob) {
    const digest = await crypto.subtle.digest('SHA-256', await blob.arrayBuffer());
    return Array.from(new Uint8Array(digest)).map((b) => b.toString(16).padStart(2, '0')).join('');
  }

  function randomFile(name, size, type) {
    const bytes = new Uint8Array(size);
    for (let i = 0; i < size; i += 65536) {
      crypto.getRandomValues(bytes.subarray(i, Math.min(size, i + 65536)));
    }
    return new File([bytes], name, { type: type || 'application/octet-stream', lastModified: 1700000000000 });
  }

  function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

  window.interop = {
    log,
    setPhase(p) { phase = p; },
    getPhase() { return phase; },
    sha256,
    randomFile,
    sleep,
  };
})();
