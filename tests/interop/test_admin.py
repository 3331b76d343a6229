"""
The operator's view (chunkd/admin.py) in a real Chromium: Debian's, through
playwright-core, loading /_admin/ from a real chunkd process over loopback
while a tus upload streams into it; the page (which polls chunkd's JSON API
by itself) shows the upload in progress, then among the completed ones.
Screenshots go to tests/interop/output/ (not committed).

Refusal from a non-loopback address without a token is tested over a real
socket on such an address in tests/test_admin.py.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict

from twisted.internet import defer, threads
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool

from tests.helpers import RawConnection, finalResponse, httpResponses
from tests.interop.harness import HERE, JS, InteropTestCase, requireChromium, requireNode, runBounded

OUTPUT = os.path.join(HERE, "output")
TUS = {"Tus-Resumable": "1.0.0"}


class AdminViewTests(InteropTestCase):
    def setUp(self) -> Any:
        requireNode(["playwright-core"])
        requireChromium()
        os.makedirs(OUTPUT, exist_ok=True)
        return super().setUp()

    def show(self, table: str, text: str, screenshot: str) -> "defer.Deferred[Dict[str, Any]]":
        args = {"page": self.chunkd.url("/_admin/"), "chromium": requireChromium(), "timeout": 60,
                "table": table, "text": text, "screenshot": os.path.join(OUTPUT, screenshot)}
        argv = [requireNode(), os.path.join(JS, "admin.mjs"), json.dumps(args)]
        d = threads.deferToThread(runBounded, argv, 70, HERE)

        def check(out: Dict[str, Any]) -> Dict[str, Any]:
            if out.get("error"):
                raise AssertionError(f"the admin page run failed: {out['error']}\nconsole: {out.get('console')}\n"
                                     f"tables: {out.get('tables')}\nchunkd log:\n{self.chunkd.log()[-3000:]}")
            self.assertEqual(out["pageErrors"], [])
            self.assertEqual(out["status"], 200)
            return out

        return d.addCallback(check)

    @defer.inlineCallbacks
    def test_anUploadInProgressThenComplete(self) -> Any:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        client = HTTPClient(Agent(reactor, pool=pool))
        size = 2 * 1024 * 1024
        created = yield client.post(self.chunkd.url("/files/"), headers=dict(TUS, **{"Upload-Length": str(size)}))
        yield created.content()
        uploadId = created.headers.getRawHeaders("location")[0].rsplit("/", 1)[1]
        stream = yield RawConnection.open(self.chunkd.port)
        self.addCleanup(stream.close)
        stream.write(b"PATCH /files/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
                     b"Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                     b"Content-Length: %d\r\n\r\n" % (uploadId.encode(), size) + b"x" * (size // 2))
        shown = yield self.show("inProgress", uploadId, "admin-in-progress.png")
        self.assertIn("tus", shown["tables"]["inProgress"])
        self.assertIn("127.0.0.1", shown["tables"]["inProgress"])
        stream.write(b"y" * (size // 2))
        raw = yield stream.waitFor(finalResponse)
        self.assertEqual(httpResponses(raw)[-1][0], 204)
        shown = yield self.show("completed", uploadId, "admin-completed.png")
        self.assertNotIn(uploadId, shown["tables"]["inProgress"])
