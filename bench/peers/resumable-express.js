// A Resumable.js receiver written the way most deployments write one:
// Express + multer.  multer stores each chunk's part in a temp file, the
// route moves it to <uploads>/<identifier>/chunk_NNNN, and when every chunk
// is there the chunks are concatenated, in order, into the final file and the
// chunk directory is removed.  The last chunk's response is sent once the
// file is assembled, so "200 on the last chunk" means "the file is complete".
//   node resumable-express.js PORT DIRECTORY
"use strict";
const express = require("express");
const multer = require("multer");
const fs = require("fs");
const path = require("path");
const { pipeline } = require("stream/promises");

const port = Number(process.argv[2]);
const root = process.argv[3];
const tmpDir = path.join(root, "tmp");
const chunksDir = path.join(root, "chunks");
const doneDir = path.join(root, "complete");
for (const d of [tmpDir, chunksDir, doneDir]) fs.mkdirSync(d, { recursive: true });

const app = express();
const upload = multer({ dest: tmpDir });

function clean(id) {
  // Identifiers and file names come from the client: keep them to a safe alphabet.
  return String(id || "").replace(/[^0-9A-Za-z_.-]/g, "");
}
function chunkName(n) {
  return `chunk_${String(n).padStart(6, "0")}`;
}

app.get("/resumable", (req, res) => {
  const id = clean(req.query.resumableIdentifier);
  const n = parseInt(req.query.resumableChunkNumber, 10);
  const size = parseInt(req.query.resumableCurrentChunkSize, 10);
  if (!id || !(n > 0)) return res.sendStatus(400);
  try {
    const st = fs.statSync(path.join(chunksDir, id, chunkName(n)));
    if (st.size === size) return res.sendStatus(200);
  } catch (e) {
    // not there yet
  }
  return res.sendStatus(204);
});

async function assemble(dir, id, filename, total) {
  const out = path.join(doneDir, clean(filename) || id);
  const ws = fs.createWriteStream(out);
  for (let i = 1; i <= total; i++) {
    await pipeline(fs.createReadStream(path.join(dir, chunkName(i))), ws, { end: false });
  }
  await new Promise((resolve, reject) => ws.end((err) => (err ? reject(err) : resolve())));
  fs.rmSync(dir, { recursive: true, force: true });
  return out;
}

app.post("/resumable", upload.single("file"), async (req, res) => {
  const b = req.body || {};
  const id = clean(b.resumableIdentifier);
  const n = parseInt(b.resumableChunkNumber, 10);
  const total = parseInt(b.resumableTotalChunks, 10);
  if (!req.file || !id || !(n > 0) || !(total > 0) || n > total) {
    if (req.file) fs.rmSync(req.file.path, { force: true });
    return res.sendStatus(400);
  }
  const dir = path.join(chunksDir, id);
  fs.mkdirSync(dir, { recursive: true });
  fs.renameSync(req.file.path, path.join(dir, chunkName(n)));
  const received = fs.readdirSync(dir).length;
  if (received === total) {
    try {
      await assemble(dir, id, b.resumableFilename, total);
    } catch (e) {
      console.error("assembly failed", e);
      return res.sendStatus(500);
    }
  }
  return res.sendStatus(200);
});

app.listen(port, "127.0.0.1", () => {
  console.log(`resumable-express listening on 127.0.0.1:${port}, storing in ${root}`);
});
