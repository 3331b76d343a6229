// Scenarios for Resumable.js and flow.js, run by the interop driver with
// window.runScenario(spec).  spec:
//   lib        'resumable' or 'flow'
//   target     the chunkd endpoint (an absolute URL)
//   options    passed to the library (chunkSize, forceChunkSize, method, ...)
//   files      [{name, size}] built from random bytes in the page
//   dirInput   take the files from <input id="dir" webkitdirectory> instead
//   pauseAt    pause once this fraction of the bytes went out (0..1)
//   pauseMs    how long to stay paused
//   repeat     afterwards, upload the same files again with a new instance
//   timeoutMs  give up after this long
// Resolves with a report: the files (name, size, sha256, relative path,
// identifier, chunk count), what the library said (events, progress,
// success messages, errors) and the XHR log from harness.js.
(function () {
  'use strict';
  const I = window.interop;

  function makeLib(spec) {
    const options = Object.assign({ target: spec.target }, spec.options || {});
    if (spec.lib === 'resumable') {
      // Resumable.js refuses empty files unless told otherwise.
      if (!('minFileSize' in options)) options.minFileSize = 0;
      return new Resumable(options);
    }
    return new Flow(options);
  }

  function identifierOf(spec, f) { return f.uniqueIdentifier; }
  function nameOf(spec, f) { return spec.lib === 'resumable' ? f.fileName : f.name; }

  // One upload round with a fresh library instance: add the files, upload,
  // resolve when every file succeeded or failed.
  function round(spec, files, label, events) {
    return new Promise((resolve) => {
      const lib = makeLib(spec);
      const state = { success: {}, error: {}, progress: [], paused: null, label };
      const expected = files.length;
      let started = false;
      let finished = false;

      function done(reason) {
        if (finished) return;
        finished = true;
        state.reason = reason;
        state.files = lib.files.map((f) => ({
          name: nameOf(spec, f),
          identifier: identifierOf(spec, f),
          relativePath: f.relativePath,
          size: f.size,
          chunks: f.chunks.length,
          complete: f.isComplete(),
          progress: f.progress(),
        }));
        state.overall = lib.progress();
        resolve(state);
      }

      function record(name, extra) {
        events.push(Object.assign({ round: label, event: name, at: performance.now() }, extra || {}));
      }

      lib.on('fileAdded', (f) => { record('fileAdded', { name: nameOf(spec, f), identifier: identifierOf(spec, f) }); });
      lib.on('fileSuccess', (f, message) => {
        record('fileSuccess', { name: nameOf(spec, f), message: String(message).slice(0, 300) });
        state.success[identifierOf(spec, f)] = String(message);
        if (Object.keys(state.success).length + Object.keys(state.error).length === expected) done('all files ended');
      });
      lib.on('fileError', (f, message) => {
        record('fileError', { name: nameOf(spec, f), message: String(message).slice(0, 300) });
        state.error[identifierOf(spec, f)] = String(message);
        if (Object.keys(state.success).length + Object.keys(state.error).length === expected) done('all files ended');
      });
      lib.on('fileRetry', (f) => { record('fileRetry', { name: nameOf(spec, f) }); });
      lib.on('complete', () => { record('complete'); });
      lib.on('progress', () => {
        const p = lib.progress();
        state.progress.push(p);
        if (spec.pauseAt != null && label === 'first' && state.paused === null && p >= spec.pauseAt && p < 1) {
          state.paused = p;
          // Pause as a person's click would: from a task of its own, not
          // from inside the library's event (Resumable.js starts the next
          // chunk right after its progress event returns).
          setTimeout(() => {
            // Resumable.js: pause() only aborts what is in flight; each
            // file's pause(true) also keeps the queue from starting more.
            if (spec.lib === 'resumable') lib.files.forEach((f) => f.pause(true));
            lib.pause();
            I.setPhase('paused');
            record('paused', { progress: p });
          }, 0);
          setTimeout(() => {
            I.setPhase('resumed');
            record('resumed');
            if (spec.lib === 'resumable') {
              lib.files.forEach((f) => f.pause(false));
              lib.upload();
            } else {
              lib.resume();
            }
          }, spec.pauseMs || 500);
        }
      });

      function start() {
        if (started) return;
        started = true;
        record('upload');
        lib.upload();
      }
      // Resumable.js makes its chunks in timers that all run before
      // filesAdded; flow.js makes them synchronously.
      lib.on(spec.lib === 'resumable' ? 'filesAdded' : 'filesSubmitted', () => { setTimeout(start, 0); });
      lib.addFiles(files);
      setTimeout(() => done('timeout'), spec.timeoutMs || 60000);
    });
  }

  async function waitForDirectory() {
    const input = document.getElementById('dir');
    if (input.files.length) return Array.from(input.files);
    await new Promise((resolve) => input.addEventListener('change', resolve, { once: true }));
    return Array.from(input.files);
  }

  window.runScenario = async function (spec) {
    const events = [];
    let files;
    if (spec.dirInput) {
      files = await waitForDirectory();
    } else {
      files = spec.files.map((f) => I.randomFile(f.name, f.size, f.type));
    }
    const sources = [];
    for (const f of files) {
      sources.push({ name: f.name, size: f.size, sha256: await I.sha256(f), relativePath: f.webkitRelativePath || null });
    }
    I.setPhase('first');
    const rounds = [await round(spec, files, 'first', events)];
    if (spec.repeat) {
      I.setPhase('second');
      rounds.push(await round(spec, files, 'second', events));
    }
    I.setPhase('end');
    document.getElementById('status').textContent = 'done';
    return { lib: spec.lib, sources, rounds, events, requests: I.log };
  };
})();
