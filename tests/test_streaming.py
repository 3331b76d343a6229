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

from tests.helpers import (
    RawConnection,
    TusTestCase,
    deferLater,
    finalResponse,
    h,
    parseResponse,
    patchHead,
    randomBytes,
    rawRequest,
)


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

    tmpfsSize = "4m"

    @defer.inlineCallbacks
    def test_creationBeyondFreeSpaceIs507(self) -> Any:
        r = yield self.create(64 * 1024 * 1024)
        self.assertEqual(r.code, 507)
        # Nothing but the space reserve (chunkd.store.RESERVE_SIZE).
        self.assertEqual(os.listdir(os.path.join(self.storage, "uploads")), ["reserve"])
        r = yield self.create(1024)
        self.assertEqual(r.code, 201)

    @defer.inlineCallbacks
    def test_deferredUploadHittingFullDiskIs507AndKeepsWhatLanded(self) -> Any:
        """
        (Every protocol's full disk, and resuming after it: tests/test_faults.py.)
        """
        data = randomBytes(6 * 1024 * 1024)
        uploadId = yield self.createId(None, {"Upload-Defer-Length": "1"})
        r = yield self.patch(uploadId, 0, data)
        self.assertEqual(r.code, 507)
        r = yield self.head(uploadId)
        offset = int(h(r, "upload-offset"))
        self.assertGreater(offset, 0)
        self.assertEqual(self.dataOf(uploadId)[:offset], data[:offset])


class CheckpointTests(TusTestCase):
    overrides = {"storage.checkpoint_every": "1MiB"}

    @defer.inlineCallbacks
    def waitForOffset(self, uploadId: str, atLeast: int) -> Any:
        for _ in range(100):
            r = yield self.head(uploadId)
            if int(h(r, "upload-offset")) >= atLeast:
                return int(h(r, "upload-offset"))
            yield deferLater(0.02)
        return int(h(r, "upload-offset"))

    @defer.inlineCallbacks
    def test_longPatchRecordsItsOffsetAsItGoes(self) -> Any:
        data = randomBytes(8 * 1024 * 1024)
        uploadId = yield self.createId(len(data))
        sent = 5 * 1024 * 1024
        # The body stalls after 5 MiB: its first MiBs are recorded meanwhile,
        # so a crash now would not lose them.
        pending = rawRequest(self.port.getHost().port, patchHead(uploadId, 0, len(data)) + data[:sent],
                             closeAfter=1.0)
        offset = yield self.waitForOffset(uploadId, 2 * 1024 * 1024)
        self.assertGreaterEqual(offset, 2 * 1024 * 1024)
        self.assertLessEqual(offset, sent)
        record = self.store.get(uploadId)
        self.assertEqual(record.offset, offset)
        self.assertEqual(self.dataOf(uploadId)[:offset], data[:offset])
        yield pending
        final = yield self.waitForOffset(uploadId, sent)
        self.assertEqual(final, sent)

    @defer.inlineCallbacks
    def test_aPatchThatEndsOnACheckpointIs204(self) -> Any:
        """
        A body whose last batch brings it to a checkpoint, and the upload to
        its length: the checkpoint must not complete the upload under the
        body's feet, or the body's own record finds it moved on (409 for a
        PATCH that stored every byte).  Found by bench/soak.py; with the
        default 64 MiB, a 64 MiB upload in one PATCH did it.
        """
        for size in (1024 * 1024, 2 * 1024 * 1024):
            data = randomBytes(size)
            uploadId = yield self.createId(len(data))
            r = yield self.patch(uploadId, 0, data)
            self.assertEqual((r.code, h(r, "upload-offset")), (204, str(size)), r.text_)
            self.assertEqual(self.dataOf(uploadId), data)

    @defer.inlineCallbacks
    def test_checksummedPatchIsNeverCheckpointed(self) -> Any:
        import base64
        import hashlib

        data = randomBytes(6 * 1024 * 1024)
        uploadId = yield self.createId(len(data))
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        head = patchHead(uploadId, 0, len(data), f"Upload-Checksum: sha256 {digest}\r\n")
        yield rawRequest(self.port.getHost().port, head + data[:4 * 1024 * 1024], closeAfter=0.5)
        yield deferLater(0.2)
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), "0")


class ReadSizeTests(TusTestCase):
    """
    How much one socket read may bring: HEAD_READ (16 KiB) until a
    request's headers say how large its body is -- a thousand uploads
    starting at once each bring one such read before any write budget can
    pause them -- then disk.read_size for a large body, the body's length
    for a small one, and HEAD_READ again for the next request's head.
    """

    def transport(self, connection: RawConnection) -> Any:
        """The server's side of C{connection}."""
        port = connection.transport.getHost().port  # type: ignore[union-attr]
        [channel] = [c for c in self.site.channels
                     if c.transport is not None and c.transport.getPeer().port == port]
        return channel.transport

    @defer.inlineCallbacks
    def startPatch(self, length: int, sent: int = 1000) -> Any:
        """
        A new upload of C{length} bytes, a connection, and a PATCH of it
        whose head and first C{sent} bytes are on their way.
        """
        uploadId = yield self.createId(length)
        connection = yield RawConnection.open(self.port.getHost().port)
        self.addCleanup(connection.close)
        yield deferLater(0.05)
        self.heads = self.transport(connection).bufferSize  # before any byte of a request
        data = randomBytes(length)
        connection.write(patchHead(uploadId, 0, length) + data[:sent])
        yield deferLater(0.1)
        return uploadId, connection, data

    @defer.inlineCallbacks
    def test_headsAreReadSmallAndLargeBodiesLarge(self) -> Any:
        from chunkd.streaming import HEAD_READ

        uploadId, connection, data = yield self.startPatch(3 * self.config.disk.read_size)
        self.assertEqual(self.heads, HEAD_READ)
        self.assertEqual(self.transport(connection).bufferSize, self.config.disk.read_size)
        connection.write(data[1000:])
        yield connection.waitFor(finalResponse)
        self.assertEqual(self.transport(connection).bufferSize, HEAD_READ)
        self.assertEqual(self.dataOf(uploadId), data)

    @defer.inlineCallbacks
    def test_theReadSizeFollowsHowManyBodiesStream(self) -> Any:
        uploadId, connection, data = yield self.startPatch(4 * self.config.disk.read_size)
        self.assertEqual(self.disk.streamingBodies(), 1)
        self.assertEqual(self.transport(connection).bufferSize, self.config.disk.read_size)
        self.site.streamingBodies = lambda: 64  # as if 63 more bodies streamed
        connection.write(data[1000:2000])
        yield deferLater(0.1)
        self.assertEqual(self.transport(connection).bufferSize, self.config.disk.read_size // 2)
        connection.write(data[2000:])
        yield connection.waitFor(finalResponse)
        self.assertEqual(self.dataOf(uploadId), data)

    @defer.inlineCallbacks
    def test_aSmallBodyInOneRead(self) -> Any:
        length = 40_000
        uploadId, connection, data = yield self.startPatch(length, sent=1)
        self.assertEqual(self.transport(connection).bufferSize, length)
