// Drives tus-js-client (Node build) against a running chunkd for one
// scenario, and prints one JSON report on stdout:
//
//   node tus_node.mjs '<json: {scenario, endpoint, file, ...}>'
//
// The report carries what the client itself said (success or error,
// progress events, chunk completions, the upload URL) and every request it
// made (method, URL, the tus headers sent, the status received), so the
// Python side can check the client's view against the bytes on disk.

import fs from 'node:fs';
import { PassThrough } from 'node:stream';
import * as tus from 'tus-js-client';

const args = JSON.parse(process.argv[2]);
const report = {
  scenario: args.scenario,
  version: JSON.parse(fs.readFileSync(new URL('../node_modules/tus-js-client/package.json', import.meta.url))).version,
  requests: [],
  progress: [],
  chunks: [],
  success: false,
  error: null,
  url: null,
};

const SENT = ['Upload-Length', 'Upload-Defer-Length', 'Upload-Offset', 'Upload-Concat', 'Upload-Metadata',
  'Content-Type', 'X-HTTP-Method-Override', 'Tus-Resumable', 'Upload-Complete', 'Upload-Draft-Interop-Version'];
const RECEIVED = ['Location', 'Upload-Offset', 'Upload-Length', 'Tus-Resumable', 'Upload-Complete',
  'Upload-Draft-Interop-Version'];

// Every request is listed when it is sent (so one that never gets an
// answer shows too), and completed with the answer when it comes.
const pending = new Map();
function sent(req) {
  const entry = { method: req.getMethod(), url: req.getURL(), sent: {}, status: null, received: {} };
  for (const name of SENT) {
    const value = req.getHeader(name);
    if (value !== undefined && value !== null) entry.sent[name] = String(value);
  }
  pending.set(req, entry);
  report.requests.push(entry);
}
function answered(req, res) {
  const entry = pending.get(req);
  if (!entry) return;
  entry.status = res.getStatus();
  for (const name of RECEIVED) {
    const value = res.getHeader(name);
    if (value !== undefined && value !== null) entry.received[name] = String(value);
  }
}

function baseOptions(extra) {
  return {
    endpoint: args.endpoint,
    metadata: { filename: args.filename || 'source.bin', filetype: 'application/octet-stream' },
    headers: args.headers || {},
    protocol: args.protocol || 'tus-v1',
    retryDelays: [100, 300, 1000],
    onBeforeRequest: (req) => { sent(req); },
    onAfterResponse: (req, res) => { answered(req, res); },
    onProgress: (sent, total) => { report.progress.push([sent, total]); },
    onChunkComplete: (size, accepted, total) => { report.chunks.push([size, accepted, total]); },
    ...extra,
  };
}

function finish(code) {
  process.stdout.write(JSON.stringify(report) + '\n');
  process.exit(code);
}

// Never hang: the Python side has its own limit, but say why here too.
const watchdog = setTimeout(() => {
  report.error = 'timed out in tus_node.mjs';
  finish(3);
}, (args.timeout || 60) * 1000);
watchdog.unref();

function run(upload) {
  return new Promise((resolve) => {
    upload.options.onSuccess = () => { report.success = true; report.url = upload.url; resolve(); };
    upload.options.onError = (err) => { report.error = String(err && err.message || err); report.url = upload.url; resolve(); };
    upload.start();
  });
}

const data = () => fs.readFileSync(args.file);

async function main() {
  switch (args.scenario) {
    case 'plain': {
      // A Buffer in chunkSize pieces: one POST, then one PATCH per chunk.
      await run(new tus.Upload(data(), baseOptions({ chunkSize: args.chunkSize })));
      break;
    }
    case 'plain-stream': {
      // A file read stream (Node's own source type); chunkSize is required for streams.
      await run(new tus.Upload(fs.createReadStream(args.file), baseOptions({
        chunkSize: args.chunkSize, uploadSize: fs.statSync(args.file).size })));
      break;
    }
    case 'abort': {
      // Start, remember the URL in a file-backed URL storage, abort() once
      // args.abortAt bytes went out (in the middle of a PATCH body).
      const storage = new tus.FileUrlStorage(args.storage);
      const upload = new tus.Upload(data(), baseOptions({
        chunkSize: args.chunkSize,
        urlStorage: storage,
        storeFingerprintForResuming: true,
        onProgress: (sent, total) => {
          report.progress.push([sent, total]);
          if (sent >= args.abortAt && !report.aborted) {
            report.aborted = sent;
            report.url = upload.url;
            upload.abort(false).then(() => setTimeout(() => finish(0), 50));
          }
        },
      }));
      await run(upload);
      break;
    }
    case 'resume': {
      // A new process: find the previous upload by fingerprint in the same
      // URL storage, resume it, and drop the fingerprint on success.
      const storage = new tus.FileUrlStorage(args.storage);
      const upload = new tus.Upload(data(), baseOptions({
        chunkSize: args.chunkSize,
        urlStorage: storage,
        removeFingerprintOnSuccess: true,
      }));
      const previous = await upload.findPreviousUploads();
      report.previous = previous.map((p) => p.uploadUrl);
      if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
      await run(upload);
      // The entry is removed asynchronously after onSuccess: give it a moment.
      for (let i = 0; i < 40; i++) {
        report.left = (await storage.findAllUploads()).length;
        if (report.left === 0) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      break;
    }
    case 'parallel': {
      await run(new tus.Upload(data(), baseOptions({ parallelUploads: args.parallel })));
      break;
    }
    case 'with-creation': {
      await run(new tus.Upload(data(), baseOptions({ chunkSize: args.chunkSize, uploadDataDuringCreation: true })));
      break;
    }
    case 'deferred': {
      // The length is unknown at creation: a plain Readable (not an
      // fs.ReadStream: for those tus-js-client 4.3.1 reads by path and, with
      // a deferred length, declares a full chunkSize Content-Length for the
      // short last chunk and never sends Upload-Length -- a client bug, the
      // server rightly waits for the bytes it was promised), so the length
      // is told with the last PATCH.
      const stream = fs.createReadStream(args.file).pipe(new PassThrough({ highWaterMark: 64 * 1024 }));
      await run(new tus.Upload(stream, baseOptions({
        chunkSize: args.chunkSize, uploadLengthDeferred: true })));
      break;
    }
    case 'override-patch': {
      await run(new tus.Upload(data(), baseOptions({ chunkSize: args.chunkSize, overridePatchMethod: true })));
      break;
    }
    case 'terminate': {
      // abort(true) once a chunk was accepted: the client sends DELETE.
      const upload = new tus.Upload(data(), baseOptions({
        chunkSize: args.chunkSize,
        onChunkComplete: (size, accepted, total) => {
          report.chunks.push([size, accepted, total]);
          if (report.chunks.length === 1) {
            report.url = upload.url;
            upload.abort(true).then(
              () => { report.terminated = true; finish(0); },
              (err) => { report.terminated = false; report.error = String(err && err.message || err); finish(0); });
          }
        },
      }));
      await run(upload);
      break;
    }
    default:
      report.error = `unknown scenario ${args.scenario}`;
  }
  finish(0);
}

main().catch((err) => { report.error = String(err && err.stack || err); finish(2); });
