"""
chunkd.uploads: the protocol-neutral upload layer -- one write pipeline for
every protocol -- with a real store, disk pool and files, and no socket.
"""

from __future__ import annotations

import errno
import hashlib
import tempfile
from typing import Any, List, Optional

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.http_headers import Headers

import chunkd.uploads
from chunkd.config import loadConfig
from chunkd.errors import (
    BadRequest,
    ChecksumMismatch,
    Conflict,
    InsufficientStorage,
    OffsetMismatch,
    ServiceUnavailable,
    TooLarge,
    UploadGone,
    UploadLocked,
    UploadNotFound,
)
from chunkd.publish import Publisher
from chunkd.sinks import BodyOutcome
from chunkd.store import ACTIVE, COMPLETE, Publication, UploadRecord, UploadStore
from chunkd.uploads import Checksum, UploadService, WritePlan
from tests.helpers import CountingProducer, readFile, startedDisk


class UploadServiceTestCase(unittest.TestCase):
    overrides: dict = {}

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="chunkd-uploads-")
        overrides = {"storage.directory": self.directory, "storage.durable": False}
        overrides.update(self.overrides)
        self.config = loadConfig(None, overrides)
        self.disk = startedDisk(self)
        self.store = UploadStore(self.directory, self.disk, durable=False)
        self.uploads = UploadService(self.config, self.store, self.disk,
                                     Publisher(self.store, self.disk, self.config.completeDirectory))

    def sequential(self, upload: Any, offset: int, length: Optional[int], **kw: Any) -> WritePlan:
        limit = None if length is None else length - offset
        return WritePlan(offset, limit, lambda end: self.uploads.advanceTo(end, length), **kw)

    def send(self, sink: Any, pieces: List[bytes], complete: bool = True,
             trailers: Optional[Headers] = None) -> "defer.Deferred[Any]":
        for piece in pieces:
            sink.dataReceived(piece)
        if complete:
            sink.bodyEnded(trailers or Headers())
        else:
            sink.bodyFailed(Failure(ConnectionError("gone")))
        return sink.result()


class FindTests(UploadServiceTestCase):
    @defer.inlineCallbacks
    def test_anotherProtocolsUploadDoesNotExist(self) -> Any:
        record = yield self.uploads.create("tus", 10)
        self.assertEqual(self.uploads.find(record.id, "tus").id, record.id)
        self.assertRaises(UploadNotFound, self.uploads.find, record.id, "facade")
        self.assertRaises(UploadNotFound, self.uploads.open, record.id, "resumable")
        self.assertRaises(UploadNotFound, self.uploads.terminate, record.id, "facade")

    @defer.inlineCallbacks
    def test_createExpiresUnlessAskedNotTo(self) -> Any:
        idle = yield self.uploads.create("tus", 10)
        final = yield self.uploads.create("tus", 10, expires=False)
        self.assertIsNotNone(idle.expires)
        self.assertIsNone(final.expires)

    def test_checkSizeAndOffset(self) -> None:
        uploads = UploadService(loadConfig(None, {"storage.directory": self.directory, "limits.max_size": 100}),
                                self.store, self.disk, self.uploads.publisher)
        uploads.checkSize(100)
        self.assertRaises(TooLarge, uploads.checkSize, 101)
        record = UploadRecord(id="a" * 32, protocol="tus", length=10, offset=4)
        error = self.assertRaises(OffsetMismatch, self.uploads.checkOffset, record, 3)
        self.assertEqual(error.headers, {"Upload-Offset": "4"})


class WriteTests(UploadServiceTestCase):
    @defer.inlineCallbacks
    def test_bytesLandAtTheOffsetAndTheRecordFollows(self) -> Any:
        record = yield self.uploads.create("tus", 10)
        upload = self.uploads.open(record.id, "tus")
        sink = self.uploads.write(upload, self.sequential(upload, 0, 10), CountingProducer(), 4)
        written = yield self.send(sink, [b"ab", b"cd"])
        self.assertEqual((written.offset, written.state), (4, ACTIVE))
        self.assertEqual(readFile(self.store.dataPath(record.id))[:4], b"abcd")
        # Released: the next write can lock it.
        upload = self.uploads.open(record.id, "tus")
        sink = self.uploads.write(upload, self.sequential(upload, 4, 10), None, None)
        written = yield self.send(sink, [b"efghij"])
        self.assertEqual((written.offset, written.state, written.expires), (10, COMPLETE, None))
        self.assertEqual(readFile(self.store.dataPath(record.id)), b"abcdefghij")

    @defer.inlineCallbacks
    def test_theUploadIsLockedWhileTheBodyStreams(self) -> Any:
        record = yield self.uploads.create("tus", 10)
        upload = self.uploads.open(record.id, "tus")
        sink = self.uploads.write(upload, self.sequential(upload, 0, 10), None, None)
        sink.dataReceived(b"abc")
        self.assertRaises(UploadLocked, self.uploads.open, record.id, "tus")
        yield self.send(sink, [])
        self.uploads.open(record.id, "tus").close()

    @defer.inlineCallbacks
    def test_aCutOffBodyCountsForWhatLanded(self) -> Any:
        record = yield self.uploads.create("tus", 10)
        upload = self.uploads.open(record.id, "tus")
        sink = self.uploads.write(upload, self.sequential(upload, 0, 10), None, None)
        written = yield self.send(sink, [b"abc"], complete=False)
        self.assertEqual(written.offset, 3)

    @defer.inlineCallbacks
    def test_aDeclaredLengthPastTheLimitIsRefusedBeforeAnyByte(self) -> Any:
        record = yield self.uploads.create("tus", 10)
        upload = self.uploads.open(record.id, "tus")
        self.assertRaises(TooLarge, self.uploads.write, upload, self.sequential(upload, 0, 10), None, 11)
        self.uploads.open(record.id, "tus").close()  # released

    @defer.inlineCallbacks
    def test_overflowRecordsNothing(self) -> Any:
        record = yield self.uploads.create("tus", 4)
        upload = self.uploads.open(record.id, "tus")
        plan = self.sequential(upload, 0, 4, overflow=BadRequest("too long"))
        yield self.assertFailure(self.send(self.uploads.write(upload, plan, None, None), [b"abcdef"]),
                                 BadRequest)
        self.assertEqual(self.store.get(record.id).offset, 0)
        self.uploads.open(record.id, "tus").close()

    @defer.inlineCallbacks
    def test_aChecksumCountsWholeOrNothing(self) -> Any:
        record = yield self.uploads.create("tus", 6)
        good = hashlib.sha1(b"abc").digest()
        for pieces, complete, expected in (([b"abd"], True, None), ([b"ab"], False, None),
                                           ([b"abc"], True, 3)):
            upload = self.uploads.open(record.id, "tus")
            plan = self.sequential(upload, 0, 6, checksum=Checksum(hashlib.sha1(), good))
            d = self.send(self.uploads.write(upload, plan, None, None), pieces, complete)
            if expected is None:
                yield self.assertFailure(d, ChecksumMismatch)
                self.assertEqual(self.store.get(record.id).offset, 0)
            else:
                written = yield d
                self.assertEqual(written.offset, expected)

    @defer.inlineCallbacks
    def test_theProtocolsVerifyHookCanRefuse(self) -> Any:
        record = yield self.uploads.create("resumable", 6)
        outcomes: List[BodyOutcome] = []

        def whole(outcome: BodyOutcome) -> None:
            outcomes.append(outcome)
            if outcome.written != 3:
                raise BadRequest("not whole")

        upload = self.store.openShared(record.id)
        plan = WritePlan(3, 3, lambda end: self.uploads.refreshExpiry, verify=whole)
        yield self.assertFailure(self.send(self.uploads.write(upload, plan, None, None), [b"x"]), BadRequest)
        self.assertEqual((outcomes[0].written, outcomes[0].complete), (1, True))

    @defer.inlineCallbacks
    def test_aVerifyHookMayWaitForTheDisk(self) -> Any:
        record = yield self.uploads.create("tus", 3)
        upload = self.uploads.open(record.id, "tus")

        def later(outcome: BodyOutcome) -> "defer.Deferred[None]":
            return self.disk.run(lambda: None)

        plan = self.sequential(upload, 0, 3, verify=later)
        written = yield self.send(self.uploads.write(upload, plan, None, None), [b"abc"])
        self.assertEqual(written.offset, 3)

    @defer.inlineCallbacks
    def test_aFullDiskIs507AndRecordsNothing(self) -> Any:
        record = yield self.uploads.create("tus", 10)

        def full(fd: int, buffers: Any, offset: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(self.disk, "pwritev", full)
        upload = self.uploads.open(record.id, "tus")
        sink = self.uploads.write(upload, self.sequential(upload, 0, 10), None, None)
        yield self.assertFailure(self.send(sink, [b"abc"]), InsufficientStorage)
        self.assertEqual(self.store.get(record.id).offset, 0)

    @defer.inlineCallbacks
    def test_aLostLockOnASharedFileSystemCountsNothing(self) -> Any:
        """
        GlusterFS with client.strict-locks answers ENOTCONN or EBADFD to a
        host that lost its connection (and its lock): those bytes never
        count, and the client is told to try again.
        """
        record = yield self.uploads.create("tus", 10)

        def cutOff(fd: int, buffers: Any, offset: int) -> int:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

        self.patch(self.disk, "pwritev", cutOff)
        upload = self.uploads.open(record.id, "tus")
        sink = self.uploads.write(upload, self.sequential(upload, 0, 10), None, None)
        yield self.assertFailure(self.send(sink, [b"abc"]), ServiceUnavailable)
        self.assertEqual(self.store.get(record.id).offset, 0)

    @defer.inlineCallbacks
    def test_runningHashAdvancesOnlyWithTheRecord(self) -> Any:
        record = yield self.uploads.create("facade", 6)
        for piece, offset in ((b"abc", 0), (b"def", 3)):
            upload = self.uploads.open(record.id, "facade")
            plan = WritePlan(offset, 6 - offset,
                             lambda end: self.uploads.advanceTo(end, 6, completes=False), runningHash=True)
            yield self.send(self.uploads.write(upload, plan, None, None), [piece])
        sha = yield self.uploads.hashes.finish(record.id, self.store.dataPath(record.id), 6)
        self.assertEqual(sha, hashlib.sha256(b"abcdef").hexdigest())
        self.assertEqual(self.uploads.hashes.recomputed, 0)
        self.assertEqual(self.store.get(record.id).state, ACTIVE)  # the facade completes on publish


class CheckpointTests(UploadServiceTestCase):
    overrides = {"storage.checkpoint_every": 1024}

    @defer.inlineCallbacks
    def test_aLongBodyRecordsItsOffsetAsItGoes(self) -> Any:
        record = yield self.uploads.create("tus", 64 * 1024)
        upload = self.uploads.open(record.id, "tus")
        seen: List[int] = []
        real = self.store.commit

        def watch(openUpload: Any, mutate: Any) -> Any:
            d = real(openUpload, mutate)
            return d.addCallback(lambda r: seen.append(r.offset) or r)

        self.patch(self.store, "commit", watch)
        sink = self.uploads.write(upload, self.sequential(upload, 0, 64 * 1024, checkpoints=True),
                                  CountingProducer(), 64 * 1024)
        for _ in range(64):
            sink.dataReceived(b"x" * 1024)
            yield self.disk.run(lambda: None)
            yield sink.writer.flush()
        written = yield self.send(sink, [])
        self.assertEqual(written.offset, 64 * 1024)
        self.assertGreater(len(seen), 2)  # checkpoints, then the final record
        self.assertEqual(seen, sorted(seen))


class LostLockTests(UploadServiceTestCase):
    """
    A host cut off from a shared file system loses its locks; another host
    takes the upload over.  Whatever the first one then tries to record
    must not count.
    """

    @defer.inlineCallbacks
    def test_aWriteWhoseUploadMovedOnIsNotRecorded(self) -> Any:
        record = yield self.uploads.create("tus", 10)
        upload = self.uploads.open(record.id, "tus")
        plan = WritePlan(0, 10, lambda end: self.uploads.advanceTo(end, 10, since=0))
        sink = self.uploads.write(upload, plan, None, None)
        sink.dataReceived(b"stale")
        # Meanwhile "another host" took the upload over and wrote 7 bytes.
        yield self.store.update(record.id, lambda r: setattr(r, "offset", 7))
        failure = yield self.assertFailure(self.send(sink, []), OffsetMismatch)
        self.assertEqual(failure.headers, {"Upload-Offset": "7"})
        self.assertEqual(self.store.get(record.id).offset, 7)

    @defer.inlineCallbacks
    def test_aCheckpointThatCompletedTheUploadIsOurs(self) -> Any:
        """
        A body that ends exactly on a checkpoint: the checkpoint already
        recorded the last byte (and so completed the upload); the body's
        own final record must accept that, not answer 409.
        """
        record = yield self.uploads.create("tus", 10)
        yield self.store.update(record.id, self.uploads.advanceTo(10, 10, since=0))
        self.assertEqual(self.store.get(record.id).state, COMPLETE)
        final = yield self.store.update(record.id, self.uploads.advanceTo(10, 10, since=0))
        self.assertEqual((final.offset, final.state), (10, COMPLETE))

    @defer.inlineCallbacks
    def test_ourOwnCheckpointsAreNotTakenForSomeoneElse(self) -> Any:
        record = yield self.uploads.create("tus", 10)
        yield self.store.update(record.id, lambda r: setattr(r, "offset", 2))
        upload = self.uploads.open(record.id, "tus")
        plan = WritePlan(2, 8, lambda end: self.uploads.advanceTo(end, 10, since=2))
        sink = self.uploads.write(upload, plan, None, None)
        sink.dataReceived(b"abcd")
        yield self.store.update(record.id, lambda r: setattr(r, "offset", 4))  # a checkpoint of ours
        written = yield self.send(sink, [b"ef"])
        self.assertEqual(written.offset, 8)


class Sha256Tests(UploadServiceTestCase):
    """
    The sha256 of a finished upload as chunkd records it
    (L{UploadService.sha256Of}): a publication's, or -- for an upload that
    stays where it was written, as tus's do -- hashed from its file once and
    kept in its record, the one truth every process reads.
    """

    @defer.inlineCallbacks
    def complete(self, data: bytes) -> Any:
        record = yield self.uploads.create("tus", len(data))
        upload = self.uploads.open(record.id, "tus")
        sink = self.uploads.write(upload, self.sequential(upload, 0, len(data)), None, None)
        written = yield self.send(sink, [data])
        self.assertEqual(written.state, COMPLETE)
        return written

    def countHashing(self) -> List[str]:
        """Count the files hashed from now on (in the disk pool)."""
        hashed: List[str] = []
        real = chunkd.uploads.sha256OfFile

        def counting(path: str, length: int) -> str:
            hashed.append(path)
            return real(path, length)

        self.patch(chunkd.uploads, "sha256OfFile", counting)
        return hashed

    @defer.inlineCallbacks
    def test_hashedOnceThenRecorded(self) -> Any:
        data = b"the quick brown fox" * 1000
        record = yield self.complete(data)
        self.assertNotIn(b'"sha256"', readFile(self.store.recordPath(record.id)))
        hashed = self.countHashing()
        digest = yield self.uploads.sha256Of(record)
        self.assertEqual(digest, hashlib.sha256(data).hexdigest())
        stored = self.store.get(record.id)
        self.assertEqual(stored.sha256, digest)
        # A note, not activity: the janitor's clocks do not restart.
        self.assertEqual(stored.updated, record.updated)
        # Another process (another service over the same directory) reads it
        # from the record, and so does this one: no second hashing.
        other = UploadService(self.config, UploadStore(self.directory, self.disk, durable=False), self.disk,
                              Publisher(self.store, self.disk, self.config.completeDirectory))
        again = yield other.sha256Of(other.store.get(record.id))
        self.assertEqual(again, digest)
        self.assertEqual(len(hashed), 1)

    @defer.inlineCallbacks
    def test_askedTogetherHashedOnce(self) -> Any:
        data = b"x" * 300000
        record = yield self.complete(data)
        hashed = self.countHashing()
        digests = yield defer.gatherResults([self.uploads.sha256Of(record) for _ in range(3)])
        self.assertEqual(digests, [hashlib.sha256(data).hexdigest()] * 3)
        self.assertEqual(len(hashed), 1)

    @defer.inlineCallbacks
    def test_theFirstToRecordWins(self) -> Any:
        """
        Another process records the digest while this one hashes: its
        record stays as it is, and this answers what it says.
        """
        record = yield self.complete(b"abc")
        other = UploadStore(self.directory, self.disk, durable=False)
        real = chunkd.uploads.sha256OfFile

        def raced(path: str, length: int) -> str:
            other._updateNow(record.id, lambda r: setattr(r, "sha256", "f" * 64))
            return real(path, length)

        self.patch(chunkd.uploads, "sha256OfFile", raced)
        digest = yield self.uploads.sha256Of(record)
        self.assertEqual(digest, "f" * 64)
        self.assertEqual(self.store.get(record.id).sha256, "f" * 64)

    @defer.inlineCallbacks
    def test_terminatedWhileHashingIsGone(self) -> Any:
        record = yield self.complete(b"abc")
        real = chunkd.uploads.sha256OfFile

        def terminated(path: str, length: int) -> str:
            self.store.terminate(record.id)
            return real(path, length)

        self.patch(chunkd.uploads, "sha256OfFile", terminated)
        yield self.assertFailure(self.uploads.sha256Of(record), UploadGone)
        self.assertIsNone(self.store.get(record.id).sha256)

    @defer.inlineCallbacks
    def test_unfinishedIsRefused(self) -> Any:
        record = yield self.uploads.create("tus", 10)
        self.assertRaises(Conflict, self.uploads.sha256Of, record)

    @defer.inlineCallbacks
    def test_aPublishedUploadAnswersItsPublication(self) -> Any:
        record = yield self.complete(b"abc")
        published = Publication(path="/nowhere", name="x", size=3, sha256="e" * 64, completedAt=1.0)
        record = yield self.store.update(record.id, lambda r: setattr(r, "published", published))
        hashed = self.countHashing()
        digest = yield self.uploads.sha256Of(record)
        self.assertEqual((digest, hashed), ("e" * 64, []))
