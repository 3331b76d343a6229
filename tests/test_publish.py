"""
chunkd.publish: a finished upload handed to the application once, with one
sidecar schema, the running sha256, and recovery from a publication cut
short -- real store, disk pool and files, no socket.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import threading
from typing import Any, List

from twisted.internet import defer
from twisted.trial import unittest

from chunkd import hashes as hashesModule
from chunkd.complete import CompletedFiles
from chunkd.errors import InsufficientStorage, InternalError, ServiceUnavailable, UploadGone
from chunkd.hashes import sha256OfFile
from chunkd.publish import Publisher
from chunkd.store import COMPLETE, UploadStore
from tests.helpers import deferLater, startedDisk


class PublishTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="chunkd-publish-")
        self.disk = startedDisk(self)
        self.store = UploadStore(self.directory, self.disk, durable=False)
        self.complete = os.path.join(self.directory, "complete")
        self.publisher = Publisher(self.store, self.disk, self.complete)

    @defer.inlineCallbacks
    def written(self, data: bytes, protocol: str = "facade") -> Any:
        record = yield self.store.create(protocol, len(data) or None, None, metadata={"k": "v"})
        with open(self.store.dataPath(record.id), "r+b") as f:
            f.write(data)
        return record

    def sidecar(self, path: str) -> Any:
        with open(path + ".json", encoding="utf-8") as f:
            return json.load(f)


class PublishTests(PublishTestCase):
    @defer.inlineCallbacks
    def test_movedWithItsSidecarAndRecorded(self) -> Any:
        data = b"finished bytes"
        record = yield self.written(data)
        upload = self.store.open(record.id)
        self.addCleanup(upload.close)
        published = yield self.publisher.publish(upload, "clip.mp4", len(data), "../clip.mp4",
                                                 {"extra": 1})
        target = os.path.join(self.complete, "clip.mp4")
        self.assertEqual((published.state, published.expires, published.publishing), (COMPLETE, None, None))
        assert published.published is not None
        self.assertEqual((published.published.path, published.published.name, published.published.size),
                         (target, "clip.mp4", len(data)))
        self.assertFalse(os.path.exists(self.store.dataPath(record.id)))  # moved, not copied
        with open(target, "rb") as f:
            self.assertEqual(f.read(), data)
        sidecar = self.sidecar(target)
        self.assertEqual(set(sidecar), {"id", "protocol", "subject", "created", "completedAt", "size", "sha256",
                                        "filename", "clientFilename", "metadata", "path", "name", "extra"})
        self.assertEqual((sidecar["id"], sidecar["sha256"], sidecar["clientFilename"], sidecar["metadata"]),
                         (record.id, hashlib.sha256(data).hexdigest(), "../clip.mp4", {"k": "v"}))
        self.assertEqual(self.store.get(record.id).published, published.published)

    @defer.inlineCallbacks
    def test_aTakenNameGetsANumberNeverOverwrites(self) -> Any:
        first = yield self.written(b"one")
        second = yield self.written(b"two")
        for record in (first, second):
            upload = self.store.open(record.id)
            yield self.publisher.publish(upload, "same.txt", 3, "same.txt")
            upload.close()
        self.assertEqual(sorted(os.listdir(self.complete)),
                         ["same (1).txt", "same (1).txt.json", "same.txt", "same.txt.json"])
        self.assertEqual(self.store.get(second.id).published.name, "same (1).txt")

    @defer.inlineCallbacks
    def test_publishingTwiceAnswersTheFirstPublication(self) -> Any:
        record = yield self.written(b"abc")
        upload = self.store.open(record.id)
        self.addCleanup(upload.close)
        first = yield self.publisher.publish(upload, "a.txt", 3, "a.txt")
        again = yield self.publisher.publish(upload, "b.txt", 3, "b.txt")
        self.assertEqual(again.published, first.published)
        self.assertEqual(sorted(os.listdir(self.complete)), ["a.txt", "a.txt.json"])

    @defer.inlineCallbacks
    def test_theRunningHashSparesTheSecondRead(self) -> Any:
        data = os.urandom(100000)
        record = yield self.written(data)
        digest = hashlib.sha256(data)
        self.publisher.hashes.advance(record.id, digest, len(data))
        self.patch(hashesModule, "sha256OfFile", lambda *a: self.fail("read the file again"))
        upload = self.store.open(record.id)
        self.addCleanup(upload.close)
        published = yield self.publisher.publish(upload, "x", len(data), None)
        self.assertEqual(published.published.sha256, hashlib.sha256(data).hexdigest())
        self.assertEqual(self.publisher.hashes.recomputed, 0)

    @defer.inlineCallbacks
    def test_withoutARunningHashTheFileIsHashedInTheDiskPool(self) -> Any:
        data = os.urandom(3 * 1024 * 1024 + 1)
        record = yield self.written(data)
        threads: List[str] = []

        def watched(path: str, length: int) -> str:
            threads.append(threading.current_thread().name)
            return sha256OfFile(path, length)

        self.patch(hashesModule, "sha256OfFile", watched)
        upload = self.store.open(record.id)
        self.addCleanup(upload.close)
        published = yield self.publisher.publish(upload, "x", len(data), None)
        self.assertEqual(published.published.sha256, hashlib.sha256(data).hexdigest())
        self.assertEqual((self.publisher.hashes.recomputed, len(threads)), (1, 1))
        self.assertIn("chunkd-disk", threads[0])

    @defer.inlineCallbacks
    def test_aFullDiskIs507AndTheUploadStaysPublishable(self) -> Any:
        record = yield self.written(b"abc")

        def full(*args: Any, **kw: Any) -> str:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(CompletedFiles, "publish", full)
        upload = self.store.open(record.id)
        self.addCleanup(upload.close)
        yield self.assertFailure(defer.ensureDeferred(self.publisher.publish(upload, "x", 3, None)),
                                 InsufficientStorage)
        self.assertTrue(os.path.exists(self.store.dataPath(record.id)))
        self.assertIsNone(self.store.get(record.id).published)


class RecoveryTests(PublishTestCase):
    @defer.inlineCallbacks
    def test_aPublicationCutShortAfterTheMoveIsAdopted(self) -> Any:
        record = yield self.written(b"abc")
        real = self.store.update

        def failRecording(uploadId: str, mutate: Any) -> Any:
            if mutate.__name__ == "recordPublication":
                return defer.fail(OSError(errno.EIO, "I/O error"))
            return real(uploadId, mutate)

        self.patch(self.store, "update", failRecording)
        upload = self.store.open(record.id)
        yield self.assertFailure(defer.ensureDeferred(self.publisher.publish(upload, "a.txt", 3, None)),
                                 InternalError)
        upload.close()
        self.flushLoggedErrors()
        self.patch(self.store, "update", real)
        cutShort = self.store.get(record.id)
        self.assertEqual((cutShort.publishing, cutShort.published), ("a.txt", None))
        self.assertEqual(self.store.reconcile()["missing"], 0)  # not taken for lost data
        adopted = yield self.publisher.adopt(self.store.get(record.id))
        self.assertEqual((adopted.state, adopted.published.name), (COMPLETE, "a.txt"))
        self.assertEqual(sorted(os.listdir(self.complete)), ["a.txt", "a.txt.json"])

    @defer.inlineCallbacks
    def test_aCrashBetweenTheMoveAndTheSidecarIsFinished(self) -> Any:
        """
        A process killed after the file moved into the completed area and
        before its sidecar was in place: nobody is publishing it any more,
        so the next request finishes the publication instead of waiting
        for a sidecar that never comes (503 for ever).  Found by the kill
        -9 soak (bench/soak.py).
        """
        data = os.urandom(5000)
        record = yield self.written(data)
        realReplace = os.replace

        def killedBeforeTheSidecar(src: str, dst: str) -> None:
            if dst.startswith(self.complete + os.sep):
                raise OSError(errno.EIO, "killed")  # as far as the files can tell
            realReplace(src, dst)

        self.patch(os, "replace", killedBeforeTheSidecar)
        upload = self.store.open(record.id)
        yield self.assertFailure(defer.ensureDeferred(self.publisher.publish(upload, "a.txt", len(data), None)),
                                 InternalError)
        upload.close()  # the process is gone, and its lock with it
        self.patch(os, "replace", realReplace)
        self.assertFalse(os.path.exists(self.store.dataPath(record.id)))
        self.assertFalse(os.path.exists(os.path.join(self.complete, "a.txt.json")))
        restarted = Publisher(self.store, self.disk, self.complete)
        restarted.adoptWait = 1.0
        adopted = yield restarted.adopt(self.store.get(record.id))
        self.assertEqual((adopted.state, adopted.published.name), (COMPLETE, "a.txt"))
        self.assertEqual(adopted.published.sha256, hashlib.sha256(data).hexdigest())
        self.assertEqual(sorted(os.listdir(self.complete)), ["a.txt", "a.txt.json"])
        self.assertEqual(self.sidecar(os.path.join(self.complete, "a.txt"))["id"], record.id)

    @defer.inlineCallbacks
    def test_ourOwnLinkIsTakenUpWhereItStopped(self) -> Any:
        record = yield self.written(b"abc")
        os.makedirs(self.complete)
        os.link(self.store.dataPath(record.id), os.path.join(self.complete, "a.txt"))
        upload = self.store.open(record.id)
        self.addCleanup(upload.close)
        published = yield self.publisher.publish(upload, "a.txt", 3, None)
        self.assertEqual(published.published.name, "a.txt")
        self.assertEqual(sorted(os.listdir(self.complete)), ["a.txt", "a.txt.json"])

    @defer.inlineCallbacks
    def test_anotherUploadsSidecarIsNotAdopted(self) -> Any:
        record = yield self.written(b"abc")
        yield self.store.update(record.id, lambda r: setattr(r, "publishing", "a.txt"))
        os.makedirs(self.complete)
        with open(os.path.join(self.complete, "a.txt"), "wb") as f:
            f.write(b"abc")
        with open(os.path.join(self.complete, "a.txt.json"), "w") as f:
            json.dump({"id": record.id, "created": record.created - 1, "size": 3, "sha256": "x",
                       "completedAt": 1.0}, f)
        os.unlink(self.store.dataPath(record.id))
        self.publisher.adoptWait = 0.2
        # Its own sidecar never comes: after the wait, "try again", not a
        # publication that is someone else's.
        yield self.assertFailure(defer.ensureDeferred(self.publisher.adopt(self.store.get(record.id))),
                                 ServiceUnavailable)

    @defer.inlineCallbacks
    def test_dataGoneWithoutAPublicationIsGone(self) -> Any:
        record = yield self.written(b"abc")
        os.unlink(self.store.dataPath(record.id))
        yield self.assertFailure(defer.ensureDeferred(self.publisher.adopt(self.store.get(record.id))),
                                 UploadGone)

    @defer.inlineCallbacks
    def test_aPublicationUnderWayElsewhereIsWaitedFor(self) -> Any:
        """
        Seen with Resumable.js on three processes: the process that lost
        the race to complete an upload found its data already moved, before
        the winner wrote the sidecar, and answered 410 for a stored chunk.
        """
        record = yield self.written(b"abc")
        moved = threading.Event()
        proceed = threading.Event()
        self.addCleanup(proceed.set)
        real = CompletedFiles.publish

        def slowSidecar(area: CompletedFiles, source: str, name: str, info: Any, durable: bool = True) -> str:
            target = os.path.join(area.directory, name)
            os.link(source, target)
            os.unlink(source)
            moved.set()
            proceed.wait(10)
            # Put the source back as it was, and let the real step finish
            # (it takes its own link up and writes the sidecar).
            os.link(target, source)
            return real(area, source, name, info, durable)

        self.patch(CompletedFiles, "publish", slowSidecar)
        upload = self.store.open(record.id)
        self.addCleanup(upload.close)
        winner = defer.ensureDeferred(self.publisher.publish(upload, "a.txt", 3, None))
        yield self.disk.run(moved.wait, 10)
        other = Publisher(self.store, self.disk, self.complete)  # another process's
        loser = defer.ensureDeferred(other.adopt(self.store.get(record.id)))
        yield deferLater(0.2)
        self.assertNoResult(loser)
        proceed.set()
        first = yield winner
        second = yield loser
        self.assertEqual((second.state, second.published), (COMPLETE, first.published))
        self.assertEqual(sorted(os.listdir(self.complete)), ["a.txt", "a.txt.json"])
