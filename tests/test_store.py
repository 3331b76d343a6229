"""
chunkd.store: records, data files and locks, with a real disk pool and real
files, and no socket.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from typing import Any, List, Tuple

from twisted.internet import defer
from twisted.trial import unittest

from chunkd.errors import InsufficientStorage, UploadGone, UploadLocked, UploadNotFound
from chunkd.events import POST_CREATE, POST_EXPIRE, POST_FINISH, POST_TERMINATE
from chunkd.store import (
    ACTIVE,
    COMPLETE,
    EXPIRED,
    RECORD_SCHEMA,
    RESERVE_SIZE,
    RESERVE_STEP,
    TERMINATED,
    Publication,
    Reconciliation,
    UploadRecord,
    UploadStore,
)
from tests.helpers import deferLater, fillDisk, mountSmallTmpfs, startedDisk


class StoreTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="chunkd-store-")
        self.disk = startedDisk(self)
        self.now = 1000.0
        self.store = UploadStore(self.directory, self.disk, durable=True, clock=lambda: self.now)
        self.events: List[Tuple[str, str]] = []
        self.store.events.subscribe(lambda event, record: self.events.append((event, record.id)))

    def settle(self) -> "defer.Deferred[None]":
        # Events reach listeners through callFromThread: one reactor turn.
        return deferLater(0.01)


class CreateTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_createPreallocatesAndRecords(self) -> Any:
        record = yield self.store.create("tus", 4096, 60.0, metadata={"filename": "a.txt"},
                                         extra={"tus_metadata": "x"})
        self.assertEqual(os.path.getsize(self.store.dataPath(record.id)), 4096)
        again = self.store.get(record.id)
        self.assertEqual((again.length, again.offset, again.state, again.expires, again.schema),
                         (4096, 0, ACTIVE, 1060.0, RECORD_SCHEMA))
        self.assertEqual(again.metadata, {"filename": "a.txt"})
        yield self.settle()
        self.assertEqual(self.events, [(POST_CREATE, record.id)])

    @defer.inlineCallbacks
    def test_emptyUploadIsCompleteAtOnce(self) -> Any:
        record = yield self.store.create("tus", 0, 60.0)
        self.assertEqual(self.store.get(record.id).state, COMPLETE)
        yield self.settle()
        self.assertEqual([e for e, _ in self.events], [POST_CREATE, POST_FINISH])

    def test_idsThatAreNotOursAreNotFound(self) -> None:
        for bad in ("../../etc/passwd", "ABCDEF", "0" * 31, "0" * 33, "g" * 32, "", "0" * 32 + "\n"):
            self.assertRaises(UploadNotFound, self.store.get, bad)
            self.assertRaises(UploadNotFound, self.store.dataPath, bad)
        self.assertEqual(os.listdir(os.path.join(self.directory, "uploads")), [])

    def test_unknownUploadIsNotFound(self) -> None:
        self.assertRaises(UploadNotFound, self.store.get, "0" * 32)

    def test_unreadableRecordIsNotFound(self) -> None:
        with open(self.store.recordPath("1" * 32), "wb") as f:
            f.write(b"{not json")
        self.assertRaises(UploadNotFound, self.store.get, "1" * 32)
        self.flushLoggedErrors()


class LockTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_oneWriterAtATime(self) -> Any:
        record = yield self.store.create("tus", 10, None)
        first = self.store.open(record.id)
        self.addCleanup(first.close)
        self.assertRaises(UploadLocked, self.store.open, record.id)
        self.assertRaises(UploadLocked, self.store.openShared, record.id)
        self.assertIsNone(self.store.tryLock(record.id))
        first.close()
        second = self.store.open(record.id)
        second.close()

    @defer.inlineCallbacks
    def test_sharedWritersExcludeAnExclusiveOne(self) -> Any:
        record = yield self.store.create("resumable", 10, None)
        a, b = self.store.openShared(record.id), self.store.openShared(record.id)
        self.assertRaises(UploadLocked, self.store.open, record.id)
        a.close()
        b.close()
        fd = self.store.tryLock(record.id)
        assert fd is not None
        os.close(fd)

    @defer.inlineCallbacks
    def test_expiredAndTerminatedUploadsAreGone(self) -> Any:
        record = yield self.store.create("tus", 10, 5.0)
        self.now += 10
        self.assertRaises(UploadGone, self.store.getLive, record.id)
        self.assertRaises(UploadGone, self.store.open, record.id)
        other = yield self.store.create("tus", 10, None)
        self.store.terminate(other.id)
        self.assertRaises(UploadGone, self.store.getLive, other.id)
        self.assertFalse(os.path.exists(self.store.dataPath(other.id)))
        self.assertEqual(self.store.get(other.id).state, TERMINATED)
        yield self.settle()
        self.assertIn((POST_TERMINATE, other.id), self.events)


class TerminateTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_anUploadEndsOnceWhoeverEndsIt(self) -> Any:
        """
        Two processes' janitors (or a janitor and a DELETE) may both decide
        to end an upload whose data is gone: one tombstone, one event.
        """
        record = yield self.store.create("tus", 10, None)
        os.unlink(self.store.dataPath(record.id))
        self.assertTrue(self.store.terminate(record.id, EXPIRED))
        self.assertFalse(self.store.terminate(record.id, EXPIRED))
        self.assertFalse(self.store.terminate(record.id, TERMINATED))
        self.assertEqual(self.store.get(record.id).state, EXPIRED)
        yield self.settle()
        self.assertEqual([e for e, _ in self.events], [POST_CREATE, POST_EXPIRE])


class CommitTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_commitAppliesTheMutationUnderTheRecordLock(self) -> Any:
        record = yield self.store.create("tus", 5, None)
        upload = self.store.open(record.id)
        self.addCleanup(upload.close)
        os.pwrite(upload.fd, b"hello", 0)

        def advance(r: UploadRecord) -> None:
            r.offset = 5
            r.state = COMPLETE

        updated = yield self.store.commit(upload, advance)
        self.assertEqual((updated.offset, updated.state), (5, COMPLETE))
        self.assertEqual(self.store.get(record.id).offset, 5)
        yield self.settle()
        self.assertEqual(self.events[-1], (POST_FINISH, record.id))

    @defer.inlineCallbacks
    def test_recordIsReplacedWhole(self) -> Any:
        record = yield self.store.create("tus", 5, None)
        yield self.store.update(record.id, lambda r: setattr(r, "offset", 3))
        leftovers = [n for n in os.listdir(os.path.join(self.directory, "uploads")) if n.endswith(".tmp")]
        self.assertEqual(leftovers, [])
        with open(self.store.recordPath(record.id), "rb") as f:
            self.assertEqual(json.loads(f.read())["offset"], 3)


class SpaceReserveTests(StoreTestCase):
    """
    A record is replaced by writing a new file, which needs a block of its
    own: on a real full disk (a small tmpfs) the space reserve lets an
    existing upload still record what reached it.
    """

    def setUp(self) -> None:
        super().setUp()
        self.directory = mountSmallTmpfs(self, "4m")
        self.store = UploadStore(self.directory, self.disk, durable=True, clock=lambda: self.now)

    def reserveSize(self) -> int:
        return os.path.getsize(self.store.reservePath)

    def fillDisk(self) -> str:
        return fillDisk(self, self.directory)

    def advance(self, record: UploadRecord) -> None:
        record.offset += 1

    @defer.inlineCallbacks
    def test_aFullDiskDrawsOnTheReserveToRecord(self) -> Any:
        record = yield self.store.create("tus", 10, None)
        self.assertEqual(self.reserveSize(), RESERVE_SIZE)  # made before the upload
        filler = self.fillDisk()
        updated = yield self.store.update(record.id, self.advance)
        self.assertEqual((updated.offset, self.store.get(record.id).offset), (1, 1))
        self.assertEqual(self.reserveSize(), RESERVE_SIZE - RESERVE_STEP)
        # New uploads do not take what is left: the reserve comes back first.
        yield self.assertFailure(self.store.create("tus", 10, None), InsufficientStorage)
        os.unlink(filler)
        yield self.store.create("tus", 10, None)
        self.assertEqual(self.reserveSize(), RESERVE_SIZE)

    @defer.inlineCallbacks
    def test_aSpentReserveFailsCleanly(self) -> Any:
        record = yield self.store.create("tus", 10, None)
        os.unlink(self.store.reservePath)
        self.fillDisk()
        failure = yield self.assertFailure(self.store.update(record.id, self.advance), OSError)
        self.assertEqual(failure.errno, errno.ENOSPC)
        self.assertEqual(self.store.get(record.id).offset, 0)
        # No half-written temporary record is left behind.
        self.assertEqual(sorted(n for n in os.listdir(self.store.uploads) if n.endswith(".tmp")), [])

    @defer.inlineCallbacks
    def test_keepReserveRestoresIt(self) -> Any:
        yield self.disk.run(self.store.keepReserve)
        with open(self.store.reservePath, "r+b") as f:
            f.truncate(100)
        yield self.disk.run(self.store.keepReserve)
        self.assertEqual(self.reserveSize(), RESERVE_SIZE)


class ReconcileTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_missingDataAndImpossibleOffsets(self) -> Any:
        lost = yield self.store.create("tus", 10, None)
        os.unlink(self.store.dataPath(lost.id))
        ahead = yield self.store.create("tus", 10, None)
        os.truncate(self.store.dataPath(ahead.id), 4)
        yield self.store.update(ahead.id, lambda r: setattr(r, "offset", 8))
        published = yield self.store.create("facade", 3, None)
        os.unlink(self.store.dataPath(published.id))

        def publish(r: UploadRecord) -> None:
            r.published = Publication("/elsewhere/x", "x", 3, "ab" * 32, 1.0)
            r.state = COMPLETE

        yield self.store.update(published.id, publish)
        cutShort = yield self.store.create("facade", 3, None)
        os.unlink(self.store.dataPath(cutShort.id))
        yield self.store.update(cutShort.id, lambda r: setattr(r, "publishing", "clip.mp4"))

        counts = self.store.reconcile()
        self.assertEqual(counts, {"records": 4, "missing": 1, "truncated": 1, "busy": 0})
        self.assertEqual(self.store.get(lost.id).state, EXPIRED)
        self.assertEqual(self.store.get(ahead.id).offset, 4)
        self.assertEqual(self.store.get(published.id).state, COMPLETE)
        self.assertEqual(self.store.get(cutShort.id).state, ACTIVE)
        yield self.settle()
        self.assertNotIn(POST_EXPIRE, [e for e, _ in self.events])  # reconciliation is not expiry


class ReconcileBesideOtherProcessesTests(StoreTestCase):
    """
    A process that starts beside others serving the same directory never
    corrects an upload one of them is writing (a second open file
    description stands for the other process: flock excludes it the same).
    """

    @defer.inlineCallbacks
    def test_anUploadBeingWrittenIsLeftAlone(self) -> Any:
        record = yield self.store.create("tus", 10, None)
        os.truncate(self.store.dataPath(record.id), 0)  # not preallocated yet, say
        yield self.store.update(record.id, lambda r: setattr(r, "offset", 8))
        # "Another process" holds the upload's lock (its writer does not
        # reconcile here: that would pull the offset back itself).
        writer = self.store.tryLock(record.id)
        assert writer is not None
        counts = self.store.reconcile()
        self.assertEqual((counts["busy"], counts["truncated"]), (1, 0))
        self.assertEqual(self.store.get(record.id).offset, 8)
        os.close(writer)
        self.assertEqual(self.store.reconcile()["truncated"], 1)
        self.assertEqual(self.store.get(record.id).offset, 0)

    @defer.inlineCallbacks
    def test_aSharedWriterCountsAsWriting(self) -> Any:
        record = yield self.store.create("resumable", 10, None)
        os.truncate(self.store.dataPath(record.id), 0)
        yield self.store.update(record.id, lambda r: setattr(r, "offset", 8))
        chunkWriter = self.store.openShared(record.id)
        self.addCleanup(chunkWriter.close)
        self.assertEqual(self.store.reconcile()["busy"], 1)
        self.assertEqual(self.store.get(record.id).offset, 8)

    @defer.inlineCallbacks
    def test_stoppingEndsThePass(self) -> Any:
        for _ in range(3):
            yield self.store.create("tus", 1, None)
        self.assertEqual(self.store.reconcile(lambda: True)["records"], 0)


class ReconciliationTests(StoreTestCase):
    """
    The start-up pass goes a bounded batch at a time over a streamed
    directory, and an upload a write touches first is reconciled then.
    """

    @defer.inlineCallbacks
    def test_aBatchAtATime(self) -> Any:
        ids = []
        for _ in range(5):
            record = yield self.store.create("tus", 10, None)
            ids.append(record.id)
        os.truncate(self.store.dataPath(ids[0]), 0)
        yield self.store.update(ids[0], lambda r: setattr(r, "offset", 8))
        check = Reconciliation(self.store)
        self.assertFalse(check.step(2))
        self.assertEqual(check.counts["records"], 2)
        self.assertFalse(check.step(2))
        self.assertEqual(check.counts["records"], 4)
        self.assertTrue(check.step(2))
        self.assertTrue(check.step(2))  # over, and stays over
        self.assertEqual(check.counts, {"records": 5, "missing": 0, "truncated": 1, "busy": 0})
        self.assertEqual(self.store.get(ids[0]).offset, 0)

    @defer.inlineCallbacks
    def test_theDirectoryIsStreamedNotListed(self) -> Any:
        """
        With a million uploads, a list of every name holds some 200 MB: the
        pass never asks for one.
        """
        lost = yield self.store.create("tus", 10, None)
        os.unlink(self.store.dataPath(lost.id))
        yield self.store.create("tus", 10, None)

        def listdir(path: str = ".") -> Any:
            raise AssertionError(f"the whole directory {path} was listed")

        self.patch(os, "listdir", listdir)
        self.assertEqual(self.store.reconcile(), {"records": 2, "missing": 1, "truncated": 0, "busy": 0})
        self.assertEqual(len(list(self.store.records())), 2)

    @defer.inlineCallbacks
    def test_aWriteReconcilesItsUploadFirst(self) -> Any:
        """
        A write that reaches an upload before the start-up pass does starts
        from what its data file holds, not from a recorded offset beyond it.
        """
        record = yield self.store.create("tus", 10, None)
        os.truncate(self.store.dataPath(record.id), 4)
        yield self.store.update(record.id, lambda r: setattr(r, "offset", 8))
        writer = self.store.open(record.id)
        self.addCleanup(writer.close)
        self.assertEqual(writer.record.offset, 4)
        self.assertEqual(self.store.get(record.id).offset, 4)

    @defer.inlineCallbacks
    def test_chunkWritersLeaveItToThePass(self) -> Any:
        """
        A shared (Resumable.js) writer does not correct the record: other
        chunk writers may hold the upload too.
        """
        record = yield self.store.create("resumable", 10, None)
        os.truncate(self.store.dataPath(record.id), 4)
        yield self.store.update(record.id, lambda r: setattr(r, "offset", 8))
        writer = self.store.openShared(record.id)
        self.addCleanup(writer.close)
        self.assertEqual(self.store.get(record.id).offset, 8)


class SchemaTests(unittest.TestCase):
    """
    Records written before the schema had a version still load, their
    publication moved from the protocol's keys into typed fields.
    """

    def test_roundTrip(self) -> None:
        record = UploadRecord(id="a" * 32, protocol="tus", length=3, offset=2,
                              published=Publication("/p", "p", 3, "00", 2.0), publishing=None,
                              extra={"tus_metadata": "x"})
        self.assertEqual(UploadRecord.fromJSON(record.toJSON()), record)

    def test_keysOfANewerChunkdAreKept(self) -> None:
        """
        A record written by a newer chunkd sharing the directory (a rolling
        upgrade) reads, and its unknown keys survive being saved again;
        optional fields still unset are left out, so such a record reads
        the same to an older chunkd.
        """
        raw = json.loads(UploadRecord(id="a" * 32, protocol="tus", length=5).toJSON())
        self.assertNotIn("subject", raw)
        self.assertNotIn("sha256", raw)
        raw["fromTheFuture"] = {"x": 1}
        record = UploadRecord.fromJSON(json.dumps(raw).encode())
        record.offset = 3
        again = json.loads(record.toJSON())
        self.assertEqual((again["fromTheFuture"], again["offset"]), ({"x": 1}, 3))
        record.subject = "alice"
        self.assertEqual(json.loads(record.toJSON())["subject"], "alice")

    def test_facadeRecordOfSchema1(self) -> None:
        raw = {"id": "b" * 32, "protocol": "facade", "length": 7, "offset": 7, "metadata": {},
               "created": 1.0, "updated": 9.0, "expires": None, "state": "complete",
               "extra": {"tus_metadata": "", "token_sha256": "t", "path": "/c/clip.mp4",
                         "sha256": "ff", "finalized": {"videoId": "b" * 32, "status": "complete",
                                                       "size": 7, "checksum": "sha256:ff"}}}
        record = UploadRecord.fromJSON(json.dumps(raw).encode())
        self.assertEqual(record.published, Publication("/c/clip.mp4", "clip.mp4", 7, "ff", 9.0))
        self.assertEqual(record.extra, {"tus_metadata": "", "token_sha256": "t"})
        self.assertEqual(record.schema, RECORD_SCHEMA)

    def test_resumableRecordOfSchema1(self) -> None:
        raw = {"id": "c" * 32, "protocol": "resumable", "length": 5, "state": "complete",
               "extra": {"chunkMap": "Aw==", "path": "/c/" + "c" * 32, "sha256": "ee",
                         "completed": {"path": "/c/" + "c" * 32, "name": "c" * 32, "size": 5,
                                       "sha256": "ee", "completedAt": 4.0}}}
        record = UploadRecord.fromJSON(json.dumps(raw).encode())
        self.assertEqual(record.published, Publication("/c/" + "c" * 32, "c" * 32, 5, "ee", 4.0))
        self.assertEqual(record.extra, {"chunkMap": "Aw=="})

    def test_publicationCutShortInSchema1(self) -> None:
        raw = {"id": "d" * 32, "protocol": "facade", "length": 5, "state": "active",
               "extra": {"publishing": "clip.mp4"}}
        record = UploadRecord.fromJSON(json.dumps(raw).encode())
        self.assertEqual((record.publishing, record.published, record.extra), ("clip.mp4", None, {}))


class StaleHandleTests(StoreTestCase):
    """
    Seen on GlusterFS with three processes: reading a record another
    process had just replaced failed with ESTALE, which reached the client
    as a 500.  The name points at the new record: a fresh open reads it.
    """

    @defer.inlineCallbacks
    def test_aStaleHandleIsOpenedAgain(self) -> Any:
        import builtins

        record = yield self.store.create("tus", 10, None)
        realOpen = builtins.open
        stale = [2]

        def flakyOpen(path: Any, *args: Any, **kw: Any) -> Any:
            if str(path) == self.store.recordPath(record.id) and stale[0]:
                stale[0] -= 1
                raise OSError(errno.ESTALE, "Stale file handle")
            return realOpen(path, *args, **kw)

        self.patch(builtins, "open", flakyOpen)
        self.assertEqual(self.store.get(record.id).id, record.id)
        self.assertEqual(stale, [0])

    @defer.inlineCallbacks
    def test_aHandleThatStaysStaleIsAnError(self) -> Any:
        import builtins

        record = yield self.store.create("tus", 10, None)
        realOpen = builtins.open

        def staleOpen(path: Any, *args: Any, **kw: Any) -> Any:
            if str(path) == self.store.recordPath(record.id):
                raise OSError(errno.ESTALE, "Stale file handle")
            return realOpen(path, *args, **kw)

        self.patch(builtins, "open", staleOpen)
        error = self.assertRaises(OSError, self.store.get, record.id)
        self.assertEqual(error.errno, errno.ESTALE)
