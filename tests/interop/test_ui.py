"""
chunkd's own upload page (chunkd/page.py, chunkd/ui/) in headless Chromium,
loaded from a real chunkd process at its embedded ui.path (C{/}) and used
as a person would (js/page.mjs): pick a file, pause, resume, reload the page
mid-upload and pick the file again -- through tus and through the
Resumable.js endpoint -- and with C{auth.required}, first without a token,
then with one.

The browser's upload bandwidth is throttled (DevTools network emulation) so
that "mid-upload" lasts long enough to act in; nothing about speed is
asserted.  Screenshots of the page at the end of each test are left in
C{tests/interop/output/} (ignored by git; CI keeps them as artifacts).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from twisted.internet import defer, threads

from tests.interop.harness import (
    HERE,
    JS,
    InteropTestCase,
    requireChromium,
    requireNode,
    runBounded,
    sha256File,
)

KiB = 1024
MiB = 1024 * 1024
CHUNK = 256 * KiB
#: the browser's upload bandwidth: a 3 MiB file takes some 3 s
THROTTLE = 1_000_000
OUTPUT = os.path.join(HERE, "output")
TOKEN = "ui-test-token-0f3a9c2e7b51d48e"


class PageTestCase(InteropTestCase):
    """
    chunkd with the page on, and js/page.mjs to drive it.
    """

    chunkdConfig: Dict[str, Any] = {"ui": {"chunk_size": CHUNK}}

    def setUp(self) -> Any:
        requireNode(["playwright-core"])
        requireChromium()
        os.makedirs(OUTPUT, exist_ok=True)
        return super().setUp()

    def drive(self, actions: List[Dict[str, Any]], timeout: float = 150) -> "defer.Deferred[Dict[str, Any]]":
        """
        Run js/page.mjs against chunkd's page; fire with its report (the
        requests the page made, what it showed, what it downloaded).
        """
        args = {"page": self.chunkd.url("/"), "chromium": requireChromium(),
                "profile": os.path.join(self.tempDir(), "profile"), "actions": actions,
                "timeout": timeout - 10}
        argv = [requireNode(), os.path.join(JS, "page.mjs"), json.dumps(args)]
        d = threads.deferToThread(runBounded, argv, timeout, HERE)

        def check(out: Dict[str, Any]) -> Dict[str, Any]:
            if out.get("error"):
                raise AssertionError(f"the page run failed: {out['error']}\npage errors: {out.get('pageErrors')}\n"
                                     f"console: {out.get('console')}\nfailed: {out.get('failed')}\n"
                                     f"requests: {[(r['phase'], r['method'], r['url'][-60:], r['status']) for r in out['requests']]}\n"
                                     f"driver stderr: {out.get('_stderr')}\nchunkd log:\n{self.chunkd.log()[-3000:]}")
            self.assertEqual(out["pageErrors"], [], out["console"])
            return out

        return d.addCallback(check)

    def assertShown(self, shown: Dict[str, Any], size: int, digest: str) -> None:
        self.assertEqual(shown["state"], "done", shown)
        self.assertEqual(shown["sha256"], digest)
        self.assertIn(f"({size} bytes)", shown["size"])
        self.assertEqual(shown["sent"], size)
        self.assertEqual(shown["remembered"], 0, "a finished upload is forgotten")


class UploadPageTests(PageTestCase):
    #: fewer chunks than a 3 MiB file makes at CHUNK: the page takes bigger ones
    maxChunks = 10
    chunkdConfig = {"ui": {"chunk_size": CHUNK}, "resumable": {"max_chunks": maxChunks}}

    def pauseReloadResume(self, mode: str, path: str, size: int, screenshot: str) -> List[Dict[str, Any]]:
        """
        Start an upload, pause it at a quarter, resume, reload the page past
        half of it, pick the file again and let it finish.
        """
        return [
            {"do": "throttle", "bytesPerSecond": THROTTLE},
            {"do": "mode", "value": mode},
            {"do": "phase", "name": "first"},
            {"do": "pick", "path": path},
            {"do": "waitSent", "bytes": size // 4},
            {"do": "click", "button": "pause"},
            {"do": "phase", "name": "paused"},
            {"do": "sleep", "ms": 700},
            {"do": "snapshot"},
            {"do": "phase", "name": "resumed"},
            {"do": "click", "button": "pause"},
            {"do": "waitSent", "bytes": size // 2},
            {"do": "phase", "name": "reloaded"},
            {"do": "reload"},
            {"do": "mode", "value": mode},
            {"do": "snapshot"},
            {"do": "pick", "path": path},
            {"do": "waitState", "state": "done"},
            {"do": "snapshot"},
            {"do": "download"},
            {"do": "screenshot", "path": os.path.join(OUTPUT, screenshot)},
        ]

    @defer.inlineCallbacks
    def test_tus(self) -> Any:
        """
        tus: pausing stops every request; resuming and reloading each ask
        the server for its offset (HEAD) and go on from there, not from 0;
        the page shows the sha256 chunkd recorded, which is the file's, and
        its download link serves the same bytes.
        """
        size = 3 * MiB + 777
        path, data = self.sourceFile(size, "holiday clip.bin")
        digest = sha256File(path)
        out = yield self.drive(self.pauseReloadResume("tus", path, size, "ui-tus.png"))
        tus = [r for r in out["requests"] if "/files/" in r["url"]]
        phases = {p: [r for r in tus if r["phase"] == p] for p in ("first", "paused", "resumed", "reloaded")}

        self.assertEqual([r["method"] for r in tus if r["method"] == "POST"], ["POST"], "one creation only")
        self.assertEqual(phases["first"][0]["method"], "POST")
        self.assertEqual(phases["paused"], [], "nothing is sent while paused")
        paused = out["snapshots"][0]
        self.assertEqual(paused["state"], "paused")
        for phase in ("resumed", "reloaded"):
            requests = phases[phase]
            self.assertEqual(requests[0]["method"], "HEAD", (phase, requests[:3]))
            patches = [r for r in requests if r["method"] == "PATCH"]
            self.assertGreater(int(patches[0]["offset"]), 0, (phase, requests[:3]))
        # The reloaded page shows nothing until the file is picked again.
        self.assertEqual(out["snapshots"][1]["rows"], 0)
        self.assertEqual(out["snapshots"][1]["remembered"], 1)

        shown = out["snapshots"][2]
        uploadId = shown["uploadId"]
        self.assertShown(shown, size, digest)
        self.assertEqual(sha256File(self.chunkd.uploadData(uploadId)), digest)
        record = self.chunkd.uploadRecord(uploadId)
        self.assertEqual((record["state"], record["sha256"]), ("complete", digest))
        self.assertEqual(record["metadata"]["filename"], "holiday clip.bin")
        self.assertEqual(shown["download"], self.chunkd.url(f"/files/{uploadId}"))
        [download] = out["downloads"]
        self.assertEqual((download["status"], download["size"], download["sha256"]), (200, size, digest))
        self.assertIn("attachment", download["disposition"])

    @defer.inlineCallbacks
    def test_tusAcrossADroppedConnection(self) -> Any:
        """
        The network goes away mid-PATCH and comes back: the page retries on
        its own, asks for the offset (HEAD) and goes on from the server's,
        never from 0, with no second creation.
        """
        size = 2 * MiB + 5
        path, data = self.sourceFile(size)
        digest = sha256File(path)
        out = yield self.drive([
            {"do": "throttle", "bytesPerSecond": THROTTLE},
            {"do": "pick", "path": path},
            {"do": "waitSent", "bytes": size // 3},
            {"do": "offline", "value": True},
            {"do": "phase", "name": "offline"},
            {"do": "sleep", "ms": 1500},
            {"do": "snapshot"},
            {"do": "offline", "value": False},
            {"do": "phase", "name": "online"},
            {"do": "waitState", "state": "done"},
            {"do": "snapshot"},
        ])
        tus = [r for r in out["requests"] if "/files/" in r["url"]]
        self.assertEqual([r["method"] for r in tus].count("POST"), 1)
        self.assertNotEqual(out["snapshots"][0]["state"], "done")
        self.assertNotEqual(out["snapshots"][0]["state"], "failed")
        self.assertEqual({r["status"] for r in tus if r["phase"] == "offline"}, {None}, "no answer while offline")
        back = [r for r in tus if r["phase"] == "online" and r["status"] is not None]
        self.assertEqual(back[0]["method"], "HEAD", [(r["phase"], r["method"], r["offset"], r["status"]) for r in tus])
        patches = [r for r in back if r["method"] == "PATCH"]
        self.assertGreater(int(patches[0]["offset"]), 0)
        self.assertShown(out["snapshots"][1], size, digest)
        self.assertEqual(sha256File(self.chunkd.uploadData(out["snapshots"][1]["uploadId"])), digest)

    @defer.inlineCallbacks
    def test_resumable(self) -> Any:
        """
        Resumable.js chunks, three at a time: after a reload the page first
        asks which chunks are stored (test GETs, one per chunk) and sends
        only the others; the published file and its sidecar have the
        file's sha256, which the page shows, and the page's download link
        serves the published file.
        """
        size = 3 * MiB + 12345
        path, data = self.sourceFile(size, "scan.tiff")
        digest = sha256File(path)
        out = yield self.drive(self.pauseReloadResume("resumable", path, size, "ui-resumable.png"))
        chunks = [r for r in out["requests"] if "/resumable?" in r["url"]]
        chunkSize = max(CHUNK, -(-size // self.maxChunks))
        count = -(-size // chunkSize)
        self.assertEqual(count, self.maxChunks)

        def number(r: Dict[str, Any]) -> int:
            return int(r["url"].split("resumableChunkNumber=")[1].split("&")[0])

        first = [r for r in chunks if r["phase"] == "first"]
        self.assertEqual({r["method"] for r in first}, {"POST"}, "a new file is not tested")
        self.assertEqual([r for r in chunks if r["phase"] == "paused"], [])
        reloaded = [r for r in chunks if r["phase"] == "reloaded"]
        tests = [r for r in reloaded if r["method"] == "GET"]
        posts = [r for r in reloaded if r["method"] == "POST"]
        self.assertEqual(reloaded[:len(tests)], tests, "the tests come first")
        self.assertEqual(sorted(number(r) for r in tests), list(range(1, count + 1)))
        stored = {number(r) for r in tests if r["status"] == 200}
        self.assertTrue(stored, "chunks sent before the reload are found")
        self.assertEqual(sorted(number(r) for r in posts), sorted(set(range(1, count + 1)) - stored))
        self.assertEqual({r["status"] for r in posts}, {200})

        shown = out["snapshots"][2]
        self.assertShown(shown, size, digest)
        [published] = self.chunkd.completedFiles()
        self.assertEqual(published["id"], shown["uploadId"])
        self.assertEqual(published["sha256"], digest)
        self.assertEqual(sha256File(published["path"]), digest)
        self.assertEqual(shown["download"], self.chunkd.url(f"/_ui/uploads/{published['id']}/file"))
        [download] = out["downloads"]
        self.assertEqual((download["status"], download["size"], download["sha256"]), (200, size, digest))
        self.assertIn("scan.tiff", download["disposition"])


class UploadPageAuthTests(PageTestCase):
    chunkdConfig = {"ui": {"chunk_size": CHUNK}, "auth": {"required": True, "tokens": {TOKEN: "alice"}}}

    @defer.inlineCallbacks
    def test_asksForToken(self) -> Any:
        """
        The page loads without a token and asks for one; an upload without
        it is refused (401) and says so; with the token typed in, Resume
        finishes it, every request carrying the token, as alice's upload.
        """
        size = 700 * KiB
        path, data = self.sourceFile(size, "report.pdf")
        digest = sha256File(path)
        out = yield self.drive([
            {"do": "snapshot"},
            {"do": "mode", "value": "tus"},
            {"do": "pick", "path": path},
            {"do": "waitState", "state": "failed"},
            {"do": "snapshot"},
            {"do": "phase", "name": "token"},
            {"do": "token", "value": TOKEN},
            {"do": "click", "button": "pause"},
            {"do": "waitState", "state": "done"},
            {"do": "snapshot"},
            {"do": "download"},
            {"do": "screenshot", "path": os.path.join(OUTPUT, "ui-auth.png")},
        ])
        asked, refused, shown = out["snapshots"]
        self.assertTrue(asked["authShown"])
        self.assertIn("needs a token", asked["authNote"])
        self.assertIn("failed", refused["stateText"])
        self.assertIn("token refused", refused["authNote"])

        page = [r for r in out["requests"] if r["phase"] == "start"]
        self.assertEqual([(r["method"], r["status"]) for r in page if "/files/" in r["url"]], [("POST", 401)])
        self.assertEqual({r["status"] for r in page if "/files/" not in r["url"]}, {200},
                         "the page, its script and styles load without a token")
        after = [r for r in out["requests"] if r["phase"] == "token"]
        self.assertTrue(after)
        self.assertEqual({r["authorization"] for r in after}, {f"Bearer {TOKEN}"})

        self.assertShown(shown, size, digest)
        record = self.chunkd.uploadRecord(shown["uploadId"])
        self.assertEqual((record["subject"], record["sha256"]), ("alice", digest))
        [download] = out["downloads"]
        self.assertEqual((download["status"], download["sha256"]), (200, digest))
