"""
Faults under every protocol: a real full disk in the middle of a body, and
I/O errors and quotas from a fault-injecting writer.

What a client must see: 507 with one line when the disk or its quota is
full, 500 with one line for an I/O error, for that request only; what the
upload keeps: every byte that reached the disk before the disk filled,
made durable and recorded (never one more), so the client resumes from
there once space is freed and the file ends byte-exact.  What the log
gets: one line, never a traceback.

What really happens on a full disk depends on whether the upload's length
was known at creation: then its whole file was preallocated
(C{posix_fallocate}), so its bodies cannot run out of space -- only its
record updates could, and the store's space reserve covers those.  A
deferred-length tus upload has no preallocated space, and its PATCH is
what fills the disk.  A body cut in the middle for the other protocols
(a Resumable.js chunk, a facade chunk) happens on file systems that
cannot preallocate, or through quotas; L{FaultInjector} produces it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
from typing import Any, Callable, Dict, List, Sequence

from twisted.internet import defer
from twisted.logger import globalLogPublisher

from chunkd.disk import DiskService
from chunkd.protocols.resumable import FLOW, RESUMABLE, uploadIdFor
from tests.helpers import TusTestCase, fillDisk, h, randomBytes
from tests.protocols import test_facade, test_resumable

MiB = 1024 * 1024


class FaultInjector:
    """
    A test double at the OS calls an upload's bytes go through
    (L{DiskService.pwritev} and L{DiskService.fdatasync}): writes to one
    upload's data file go through until C{room} bytes have landed, then
    fail with C{error} -- as a disk that fills up (a short write, then
    C{ENOSPC}), a quota, or a failing device would.  Other files are
    untouched.  L{heal} ends the fault.
    """

    def __init__(self, disk: DiskService, uploadId: str, error: int, room: int = 0,
                 syncFails: bool = False) -> None:
        self.disk = disk
        self.suffix = f"/{uploadId}.data"
        self.error = error
        self.room = room
        self.syncFails = syncFails
        self.failures = 0
        self.realPwritev = disk.pwritev
        self.realFdatasync = disk.fdatasync
        disk.pwritev = self.pwritev
        disk.fdatasync = self.fdatasync

    def heal(self) -> None:
        self.disk.pwritev = self.realPwritev
        self.disk.fdatasync = self.realFdatasync

    def targeted(self, fd: int) -> bool:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(self.suffix)

    def fail(self) -> None:
        self.failures += 1
        raise OSError(self.error, os.strerror(self.error))

    def pwritev(self, fd: int, buffers: Sequence[Any], offset: int) -> int:
        if self.syncFails or not self.targeted(fd):
            return self.realPwritev(fd, buffers, offset)
        if not self.room:
            self.fail()
        room, allowed = self.room, []
        for b in buffers:
            piece = memoryview(b)[:room]
            allowed.append(piece)
            room -= len(piece)
            if not room:
                break
        n = self.realPwritev(fd, allowed, offset)
        self.room -= n
        return n

    def fdatasync(self, fd: int) -> None:
        if self.syncFails and self.targeted(fd):
            self.fail()
        self.realFdatasync(fd)


class LogWatch:
    """
    Every log event while a test runs; L{tracebacks} are those that carry
    a failure (a traceback in the log).
    """

    def __init__(self, case: Any) -> None:
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def tracebacks(self) -> List[Dict[str, Any]]:
        return [e for e in self.events if "log_failure" in e]


class FullDiskMixin:
    """
    A server over a real small tmpfs, with durable storage (as deployed):
    what is recorded was fdatasync'ed.
    """

    tmpfsSize = "8m"
    overrides: Dict[str, object] = {"storage.durable": True}
    storage: str
    addCleanup: Callable[..., None]
    assertEqual: Callable[..., None]

    def growDisk(self, size: str = "64m") -> None:
        """Free space as an operator would: the volume grows."""
        subprocess.run(["mount", "-o", f"remount,size={size}", self.storage], check=True)

    def fillDisk(self) -> str:
        return fillDisk(self, self.storage)

    def dataFile(self, uploadId: str) -> bytes:
        with open(os.path.join(self.storage, "uploads", uploadId + ".data"), "rb") as f:
            return f.read()


def oneLine(body: bytes) -> bool:
    return body.count(b"\n") == 1 and body.endswith(b"\n") and b"Traceback" not in body


# -- tus ---------------------------------------------------------------------------------


class TusFullDiskTests(FullDiskMixin, TusTestCase):
    @defer.inlineCallbacks
    def test_deferredLengthPatchKeepsWhatLandedAndResumes(self) -> Any:
        """
        A deferred-length upload has no preallocated space: its PATCH fills
        the disk.  The client gets 507 with one line; the bytes written
        before ENOSPC are recorded (not 0), never beyond what the file
        holds; once space is freed the upload resumes from there.
        """
        log = LogWatch(self)
        data = randomBytes(12 * MiB)
        uploadId = yield self.createId(None, {"Upload-Defer-Length": "1"})
        r = yield self.patch(uploadId, 0, data)
        self.assertEqual(r.code, 507)
        self.assertTrue(oneLine(r.text_), r.text_)
        r = yield self.head(uploadId)
        offset = int(h(r, "upload-offset"))
        self.assertGreater(offset, 4 * MiB)  # most of the 8 MiB disk, not 0
        onDisk = self.dataFile(uploadId)
        self.assertGreaterEqual(len(onDisk), offset)
        self.assertEqual(onDisk[:offset], data[:offset])
        self.assertEqual(log.tracebacks(), [])

        self.growDisk()
        r = yield self.patch(uploadId, offset, data[offset:], {"Upload-Length": str(len(data))})
        self.assertEqual((r.code, h(r, "upload-offset")), (204, str(len(data))), r.text_)
        self.assertEqual(self.dataFile(uploadId), data)

    @defer.inlineCallbacks
    def test_knownLengthUploadKeepsItsPreallocatedSpace(self) -> Any:
        """
        A known-length upload's file was preallocated at creation: another
        file filling the disk afterwards does not stop its PATCHes (their
        record updates draw on the store's space reserve), while a new
        upload is refused with 507 at creation.
        """
        data = randomBytes(3 * MiB)
        uploadId = yield self.createId(len(data))
        filler = self.fillDisk()
        r = yield self.create(1024)
        self.assertEqual(r.code, 507)
        for offset in range(0, len(data), MiB):
            r = yield self.patch(uploadId, offset, data[offset:offset + MiB])
            self.assertEqual((r.code, h(r, "upload-offset")), (204, str(offset + MiB)), r.text_)
        self.assertEqual(self.dataFile(uploadId), data)
        os.unlink(filler)
        r = yield self.create(1024)
        self.assertEqual(r.code, 201)

    @defer.inlineCallbacks
    def test_checksummedPatchCutByTheDiskRecordsNothing(self) -> Any:
        """
        A PATCH with Upload-Checksum counts whole or not at all: cut by a
        full disk, none of it is recorded.
        """
        import base64

        data = randomBytes(12 * MiB)
        uploadId = yield self.createId(None, {"Upload-Defer-Length": "1"})
        digest = base64.b64encode(hashlib.sha1(data).digest()).decode()
        r = yield self.patch(uploadId, 0, data, {"Upload-Checksum": f"sha1 {digest}"})
        self.assertEqual(r.code, 507)
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), "0")


class TusInjectedFaultTests(TusTestCase):
    overrides = {"storage.durable": True}

    @defer.inlineCallbacks
    def test_knownLengthPatchCutByTheDiskResumes(self) -> Any:
        """
        Where preallocation is not possible, a known-length upload's PATCH
        can meet a full disk too: it keeps what landed, as a deferred one.
        """
        data = randomBytes(3 * MiB)
        uploadId = yield self.createId(len(data))
        fault = FaultInjector(self.disk, uploadId, errno.ENOSPC, room=MiB + 12345)
        r = yield self.patch(uploadId, 0, data)
        self.assertEqual((r.code, r.text_), (507, b"the disk is full\n"))
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), str(MiB + 12345))
        fault.heal()
        r = yield self.patch(uploadId, MiB + 12345, data[MiB + 12345:])
        self.assertEqual((r.code, h(r, "upload-offset")), (204, str(len(data))))
        self.assertEqual(self.dataOf(uploadId), data)

    @defer.inlineCallbacks
    def test_quotaIs507AndKeepsWhatLanded(self) -> Any:
        """
        EDQUOT is the user's quota, not our failure: 507 as a full disk,
        and the bytes before it are kept.
        """
        log = LogWatch(self)
        data = randomBytes(2 * MiB)
        uploadId = yield self.createId(len(data))
        fault = FaultInjector(self.disk, uploadId, errno.EDQUOT, room=700000)
        r = yield self.patch(uploadId, 0, data)
        self.assertEqual((r.code, r.text_), (507, b"the storage quota is exhausted\n"))
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), "700000")
        self.assertEqual(self.dataOf(uploadId)[:700000], data[:700000])
        self.assertEqual(log.tracebacks(), [])
        fault.heal()
        r = yield self.patch(uploadId, 700000, data[700000:])
        self.assertEqual(r.code, 204)
        self.assertEqual(self.dataOf(uploadId), data)

    @defer.inlineCallbacks
    def test_ioErrorIs500ForThatRequestOnly(self) -> Any:
        """
        EIO mid-body: 500 with one line for that PATCH, nothing of it
        recorded (the device failed under those bytes), one log line and
        no traceback; another upload sent at the same time completes, and
        the failed one completes once the device is well.
        """
        log = LogWatch(self)
        data, other = randomBytes(4 * MiB), randomBytes(4 * MiB)
        uploadId = yield self.createId(len(data))
        otherId = yield self.createId(len(other))
        r = yield self.patch(uploadId, 0, data[:MiB])
        self.assertEqual(r.code, 204)
        fault = FaultInjector(self.disk, uploadId, errno.EIO, room=MiB)
        failing, succeeding = yield defer.gatherResults(
            [self.patch(uploadId, MiB, data[MiB:]), self.patch(otherId, 0, other)])
        self.assertEqual((failing.code, failing.text_), (500, b"writing the upload failed\n"))
        self.assertEqual((succeeding.code, h(succeeding, "upload-offset")), (204, str(len(other))))
        self.assertEqual(self.dataOf(otherId), other)
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), str(MiB))
        self.assertEqual(log.tracebacks(), [])
        lines = [e for e in log.events if e.get("uploadId") == uploadId and "failed" in e["log_format"]]
        self.assertEqual(len(lines), 1)
        fault.heal()
        r = yield self.patch(uploadId, MiB, data[MiB:])
        self.assertEqual((r.code, h(r, "upload-offset")), (204, str(len(data))))
        self.assertEqual(self.dataOf(uploadId), data)

    @defer.inlineCallbacks
    def test_failedFdatasyncRecordsNothing(self) -> Any:
        """
        The bytes are written but cannot be made durable: 500, and the
        offset stays where it was -- never an offset that is not on disk.
        """
        log = LogWatch(self)
        uploadId = yield self.createId(10)
        fault = FaultInjector(self.disk, uploadId, errno.EIO, syncFails=True)
        r = yield self.patch(uploadId, 0, b"0123456789")
        self.assertEqual((r.code, r.text_), (500, b"recording the upload failed\n"))
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), "0")
        self.assertEqual(log.tracebacks(), [])
        fault.heal()
        r = yield self.patch(uploadId, 0, b"0123456789")
        self.assertEqual(r.code, 204)


# -- Resumable.js and flow.js -------------------------------------------------------------


class ChunkFullDiskTests(FullDiskMixin, test_resumable.ChunkTestCase):
    @defer.inlineCallbacks
    def test_preallocatedChunksLandOnAFullDisk(self) -> Any:
        """
        A Resumable.js upload's file is preallocated when its first chunk
        arrives: with the disk filled by another file after that, its
        other chunks are still stored and it completes byte-exact (its
        record updates, and the sidecar, fit in what the space reserve
        gave up), while a new upload is refused with 507.
        """
        f = test_resumable.sample(3 * MiB, chunkSize=MiB)
        status, _ = yield self.send(RESUMABLE, f, 1)
        self.assertEqual(status, 200)
        self.fillDisk()
        g = test_resumable.sample(3 * MiB, chunkSize=MiB, name="late.bin")
        status, text = yield self.send(RESUMABLE, g, 1)
        self.assertEqual(status, 507)
        self.assertTrue(oneLine(text), text)
        status, _ = yield self.send(RESUMABLE, f, 2)
        self.assertEqual(status, 200)
        status, text = yield self.send(RESUMABLE, f, 3)
        self.assertEqual((status, json.loads(text)["complete"]), (200, True))
        self.assertCompleted(RESUMABLE, f)


class ChunkInjectedFaultTests(test_resumable.ChunkTestCase):
    overrides = {"storage.durable": True}

    @defer.inlineCallbacks
    def test_aChunkCutByTheDiskIsNotReceived(self) -> Any:
        """
        A chunk is whole or nothing: one cut by a full disk gets 507 and is
        not marked received (its test GET answers 204), although some of
        its bytes reached the file; Resumable.js and flow.js retry it
        later (507 is not among their permanent errors), and the retry
        completes the upload.  The same for both dialects.
        """
        for dialect in (RESUMABLE, FLOW):
            f = test_resumable.sample(3 * MiB, chunkSize=MiB, name=f"{dialect.name}.bin")
            status, _ = yield self.send(dialect, f, 1)
            self.assertEqual(status, 200)
            uploadId = uploadIdFor(dialect, f.identifier)
            fault = FaultInjector(self.disk, uploadId, errno.ENOSPC, room=300000)
            status, text = yield self.send(dialect, f, 2)
            self.assertEqual((status, text), (507, b"the disk is full\n"))
            self.assertEqual(self.dataOf(uploadId)[MiB:MiB + 300000], f.bytesOf(2)[:300000])
            status, _ = yield self.test(dialect, f, 2)
            self.assertEqual(status, 204)
            fault.heal()
            for number in (3, 2):
                status, _ = yield self.send(dialect, f, number)
                self.assertEqual(status, 200)
            self.assertCompleted(dialect, f)


# -- the chunked-upload facade ------------------------------------------------------------


class FacadeFullDiskTests(FullDiskMixin, test_facade.FacadeTestCase):
    @defer.inlineCallbacks
    def test_preallocatedChunksLandOnAFullDisk(self) -> Any:
        """
        A facade upload is preallocated at creation: multipart chunks after
        another file filled the disk still land, and finalize answers the
        right sha256; a new upload is refused with 507.
        """
        data = randomBytes(3 * MiB)
        uploadId, token = yield self.createUpload(len(data))
        self.fillDisk()
        r = yield self.create(1024, {"Tus-Resumable": "1.0.0"})
        self.assertEqual(r.code, 507)
        self.assertTrue(oneLine(r.body_), r.body_)
        for offset in range(0, len(data), MiB):
            r = yield self.patchMultipart(uploadId, offset, data[offset:offset + MiB])
            self.assertEqual((r.code, h(r, "upload-offset")), (204, str(offset + MiB)), r.body_)
        r = yield self.finalize(uploadId, "clip.mp4", token)
        self.assertEqual(r.code, 200, r.body_)
        self.assertEqual(json.loads(r.body_)["checksum"], test_facade.sha256(data))


class FacadeInjectedFaultTests(test_facade.FacadeTestCase):
    overrides = {"storage.durable": True}

    @defer.inlineCallbacks
    def test_aMultipartChunkCutByTheDiskKeepsWhatLanded(self) -> Any:
        """
        A multipart PATCH cut by a full disk: 507, the bytes that landed
        are recorded (as for a dropped connection, every byte counts), the
        camera app's HEAD says where to resume, and finalize's sha256 --
        computed as the bytes arrive -- is that of the whole file.
        """
        data = randomBytes(2 * MiB)
        uploadId, token = yield self.createUpload(len(data))
        r = yield self.patchMultipart(uploadId, 0, data[:MiB])
        self.assertEqual(r.code, 204)
        fault = FaultInjector(self.disk, uploadId, errno.ENOSPC, room=123457)
        r = yield self.patchMultipart(uploadId, MiB, data[MiB:])
        self.assertEqual((r.code, r.body_), (507, b"the disk is full\n"))
        r = yield self.head(uploadId)
        resume = MiB + 123457
        self.assertEqual(h(r, "upload-offset"), str(resume))
        fault.heal()
        r = yield self.patchMultipart(uploadId, resume, data[resume:])
        self.assertEqual((r.code, h(r, "upload-offset")), (204, str(len(data))), r.body_)
        r = yield self.finalize(uploadId, "clip.mp4", token)
        self.assertEqual(r.code, 200, r.body_)
        self.assertEqual(json.loads(r.body_)["checksum"], test_facade.sha256(data))
        self.assertEqual(self.facade().recomputed, 0)  # the running hash saw exactly what landed

    @defer.inlineCallbacks
    def test_rawChunkIoErrorIs500AndRecordsNothing(self) -> Any:
        log = LogWatch(self)
        data = randomBytes(MiB)
        uploadId, token = yield self.createUpload(len(data))
        fault = FaultInjector(self.disk, uploadId, errno.EIO, room=1000)
        r = yield self.patchRaw(uploadId, 0, data)
        self.assertEqual((r.code, r.body_), (500, b"writing the upload failed\n"))
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), "0")
        self.assertEqual(log.tracebacks(), [])
        fault.heal()
        r = yield self.patchRaw(uploadId, 0, data)
        self.assertEqual(r.code, 204)
        r = yield self.finalize(uploadId, "clip.mp4", token)
        self.assertEqual(json.loads(r.body_)["checksum"], test_facade.sha256(data))
