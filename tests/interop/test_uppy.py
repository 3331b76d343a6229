"""
Uppy with @uppy/tus in headless Chromium, uploading two files to chunkd's
tus endpoint from a page on another origin (so CORS is exercised too).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

from twisted.internet import defer

from tests.interop.harness import BrowserTestCase, sha256File

KiB = 1024
MiB = 1024 * 1024


def idOf(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


class UppyTests(BrowserTestCase):
    packages = ("@uppy/core", "@uppy/tus", "esbuild")
    bundles = {"uppy.js": "uppy-entry.js"}

    @defer.inlineCallbacks
    def test_twoFiles(self) -> Any:
        files = [{"name": "first clip.mp4", "size": 2 * MiB + 1234, "type": "video/mp4"},
                 {"name": "second.jpg", "size": 300 * KiB + 7, "type": "image/jpeg"}]
        result = yield self.runPage("uppy.html", {"endpoint": self.chunkd.url("/files/"), "files": files,
                                                  "chunkSize": MiB, "timeoutMs": 60000})
        self.assertEqual(result["result"], {"successful": 2, "failed": 0}, result)
        successes = [e for e in result["events"] if e["event"] == "upload-success"]
        self.assertEqual(sorted(e["name"] for e in successes), sorted(f["name"] for f in files))
        self.assertEqual([e for e in result["events"] if e["event"] == "complete"],
                         [{"event": "complete", "successful": 2, "failed": 0}])
        self.assertEqual(result["_browser"]["pageErrors"], [])

        sources = {s["name"]: s for s in result["sources"]}
        requests: List[Dict[str, Any]] = result["requests"]
        for f in result["files"]:
            self.assertTrue(f["complete"], f)
            uploadId = idOf(f["uploadURL"])
            # The bytes chunkd stored are the bytes the page made.
            self.assertEqual(sha256File(self.chunkd.uploadData(uploadId)), sources[f["name"]]["sha256"])
            self.assertEqual(os.path.getsize(self.chunkd.uploadData(uploadId)), sources[f["name"]]["size"])
            record = self.chunkd.uploadRecord(uploadId)
            self.assertEqual(record["state"], "complete")
            self.assertEqual(record["metadata"].get("filename") or record["metadata"].get("name"), f["name"])
            # One creation and one PATCH per started MiB, all answered as tus says.
            mine = [r for r in requests if r["url"].rstrip("/").endswith(uploadId)]
            patches = [r for r in mine if r["method"] == "PATCH"]
            size = sources[f["name"]]["size"]
            self.assertEqual(len(patches), -(-size // MiB))
            self.assertEqual([r["status"] for r in patches], [204] * len(patches))
            self.assertEqual([int(r["headers"]["Upload-Offset"]) for r in patches],
                             [n * MiB for n in range(len(patches))])
            # Progress reached the whole file and never went backwards.
            progress = result["progress"][f["name"]]
            self.assertEqual(progress[-1], [size, size])
            self.assertEqual([p[0] for p in progress], sorted(p[0] for p in progress))
        creations = [r for r in requests if r["method"] == "POST"]
        self.assertEqual(len(creations), 2)
        self.assertEqual({r["status"] for r in creations}, {201})
        self.assertEqual({r["headers"].get("Tus-Resumable") for r in requests}, {"1.0.0"})
        self.assertEqual(len(requests), 2 + 3 + 1, [(r["method"], r["url"], r["status"]) for r in requests])
