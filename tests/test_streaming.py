"""
The streaming disk path under stress: big bodies, chunked bodies, clients
that vanish mid-body, a slow disk, two writers at once, a full disk, and a
restart.  Real sockets, real files.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet import defer

from tests.helpers import deferLater, mountSmallTmpfs, parseResponse, randomBytes, rawRequest
from tests.test_tus import TusTestCase, h


def patchHead(uploadId: str, offset: int, length: int, extra: str = "") -> bytes:
    return (
        f"PATCH /files/{uploadId} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        f"Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


class StreamingTests(TusTestCase):
    @defer.inlineCallbacks
    def test_bigBodyIsStreamedNotBuffered(self) -> Any:
        data = randomBytes(8 * 1024 * 1024)
        uploadId = yield self.createId(len(data))
        r = yield self.patch(uploadId, 0, data)
        self.assertEqual(r.code, 204)
        self.assertEqual(self.dataOf(uploadId), data)

    @defer.inlineCallbacks
    def test_chunkedTransferEncoding(self) -> Any:
        pieces = [randomBytes(n) for n in (1, 70000, 300000, 5)]
        data = b"".join(pieces)
        uploadId = yield self.createId(len(data))
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        head = patchHead(uploadId, 0, 0).replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
        raw = yield rawRequest(self.port.getHost().port, head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + body)
        status, headers, _ = parseResponse(raw)
        self.assertEqual((status, headers["upload-offset"]), (204, str(len(data))))
        self.assertEqual(self.dataOf(uploadId), data)

    @defer.inlineCallbacks
    def test_disconnectMidBodyKeepsWhatArrived(self) -> Any:
        data = randomBytes(1024 * 1024)
        uploadId = yield self.createId(len(data))
        sent = 300 * 1024
        yield rawRequest(self.port.getHost().port, patchHead(uploadId, 0, len(data)) + data[:sent], closeAfter=0.3)
        for _ in range(50):  # the server records the partial write once its bytes are flushed
            r = yield self.head(uploadId)
            if h(r, "upload-offset") != "0":
                break
            yield deferLater(0.05)
        self.assertEqual(h(r, "upload-offset"), str(sent))
        self.assertEqual(self.dataOf(uploadId)[:sent], data[:sent])
        r = yield self.patch(uploadId, sent, data[sent:])
        self.assertEqual((r.code, h(r, "upload-offset")), (204, str(len(data))))
        self.assertEqual(self.dataOf(uploadId), data)

    @defer.inlineCallbacks
    def test_secondWriterGets423(self) -> Any:
        uploadId = yield self.createId(100)
        first = rawRequest(self.port.getHost().port, patchHead(uploadId, 0, 100) + b"x" * 10, closeAfter=0.5)
        yield deferLater(0.1)
        r = yield self.patch(uploadId, 0, b"y" * 10)
        self.assertEqual(r.code, 423)
        r = yield self.client.delete(self.url(f"/files/{uploadId}"), headers={"Tus-Resumable": "1.0.0"})
        yield r.content()
        self.assertEqual(r.code, 423)
        yield first
        yield deferLater(0.1)
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), "10")
        self.assertEqual(self.dataOf(uploadId)[:10], b"x" * 10)


class SlowDiskTests(TusTestCase):
    overrides = {"disk.high_water": "1MiB", "disk.low_water": "256KiB"}

    @defer.inlineCallbacks
    def test_queueStaysBoundedWhenTheDiskLags(self) -> Any:
        realPwritev = self.disk.pwritev

        def slowPwritev(fd: int, buffers: Any, offset: int) -> int:
            time.sleep(0.005)
            return realPwritev(fd, buffers, offset)

        self.disk.pwritev = slowPwritev
        data = randomBytes(24 * 1024 * 1024)
        uploadId = yield self.createId(len(data))
        r = yield self.patch(uploadId, 0, data)
        self.assertEqual(r.code, 204)
        self.assertEqual(self.dataOf(uploadId), data)
        # Pausing is advisory: what is already read still arrives.  The
        # queue stays within the high-water mark plus a few socket reads,
        # far below the 24 MiB body.
        self.assertLess(self.disk.peakQueued, 1024 * 1024 + 1024 * 1024)
        self.assertGreaterEqual(self.disk.peakQueued, 1024 * 1024)
        self.assertEqual(self.disk.queued, 0)


class RestartTests(TusTestCase):
    @defer.inlineCallbacks
    def test_recordsSurviveARestart(self) -> Any:
        uploadId = yield self.createId(10)
        yield self.patch(uploadId, 0, b"abcd")
        os.unlink(self.store.dataPath((yield self.createId(5))))  # a record whose data vanished
        counts = self.store.reconcile()
        self.assertEqual((counts["records"], counts["missing"]), (2, 1))
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), "4")


class FullDiskTests(TusTestCase):
    """
    A real full disk: a 4 MiB tmpfs as the storage directory.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.storage = mountSmallTmpfs(self)
        yield self.startServer({})

    @defer.inlineCallbacks
    def test_creationBeyondFreeSpaceIs507(self) -> Any:
        r = yield self.create(64 * 1024 * 1024)
        self.assertEqual(r.code, 507)
        self.assertEqual(os.listdir(os.path.join(self.storage, "uploads")), [])
        r = yield self.create(1024)
        self.assertEqual(r.code, 201)

    @defer.inlineCallbacks
    def test_deferredUploadHittingFullDiskIs507AndClaimsNothing(self) -> Any:
        uploadId = yield self.createId(None, {"Upload-Defer-Length": "1"})
        r = yield self.patch(uploadId, 0, b"z" * (6 * 1024 * 1024))
        self.assertEqual(r.code, 507)
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), "0")
