// Uppy with @uppy/tus, run by the interop driver with window.runScenario(spec):
//   endpoint   the chunkd tus endpoint (absolute URL)
//   files      [{name, size, type}] built from random bytes in the page
//   chunkSize  @uppy/tus chunkSize
// Resolves with the files (sha256, size, the upload URL Uppy reported), the
// events Uppy emitted, its upload() result and the XHR log.
(function () {
  'use strict';
  const I = window.interop;

  window.runScenario = async function (spec) {
    const events = [];
    const progress = {};
    const uppy = new window.Uppy({ autoProceed: false, debug: false });
    uppy.use(window.UppyTus, {
      endpoint: spec.endpoint,
      chunkSize: spec.chunkSize,
      retryDelays: [100, 500, 1000],
      limit: spec.limit || 2,
    });
    uppy.on('upload-success', (file, response) => {
      events.push({ event: 'upload-success', name: file.name, uploadURL: response.uploadURL, status: response.status });
    });
    uppy.on('upload-error', (file, error) => {
      events.push({ event: 'upload-error', name: file && file.name, error: String(error) });
    });
    uppy.on('upload-progress', (file, p) => {
      (progress[file.name] = progress[file.name] || []).push([p.bytesUploaded, p.bytesTotal]);
    });
    uppy.on('complete', (result) => {
      events.push({ event: 'complete', successful: result.successful.length, failed: result.failed.length });
    });

    const sources = [];
    for (const f of spec.files) {
      const file = I.randomFile(f.name, f.size, f.type);
      sources.push({ name: f.name, size: f.size, sha256: await I.sha256(file) });
      uppy.addFile({ name: f.name, type: file.type, data: file, source: 'interop' });
    }
    I.setPhase('upload');
    const timeout = new Promise((resolve) => setTimeout(() => resolve('timeout'), spec.timeoutMs || 60000));
    const result = await Promise.race([uppy.upload(), timeout]);
    I.setPhase('end');
    const files = uppy.getFiles().map((f) => ({
      name: f.name, size: f.size, uploadURL: f.response && f.response.uploadURL,
      complete: !!(f.progress && f.progress.uploadComplete), error: f.error || null,
    }));
    return {
      sources, files, events, progress, requests: I.log,
      result: result === 'timeout' ? 'timeout' : { successful: result.successful.length, failed: result.failed.length },
    };
  };
})();
