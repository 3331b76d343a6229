"""
chunkd.inventory against a real store: uploads written by a real
L{UploadStore} and L{Publisher} in the disk pool, then damaged on disk the
way crashes and tampering damage them; every kind of damage fsck claims to
find is found, and repaired, and an upload a writer holds is never touched.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Dict, List, Tuple

from twisted.internet import defer
from twisted.trial import unittest

from chunkd.complete import CompletedFiles
from chunkd.config import loadConfig
from chunkd.errors import Conflict, UploadGone, UploadLocked
from chunkd.inventory import PROBLEMS, Inventory, heldLocks, offlineStore
from chunkd.publish import Publisher
from chunkd.store import ACTIVE, COMPLETE, EXPIRED, TERMINATED, UploadStore
from tests.helpers import deferLater, startedDisk

HOUR = 3600.0


def aged(path: str, seconds: float = HOUR) -> None:
    """Make a file look as old as a crash long ago left it."""
    then = time.time() - seconds
    os.utime(path, (then, then))


class InventoryTestCase(unittest.TestCase):
    hooks: List[Dict[str, Any]] = []

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="chunkd-inventory-")
        self.config = loadConfig(None, {"storage.directory": self.directory, "storage.durable": False,
                                        "hooks.endpoints": self.hooks})
        self.disk = startedDisk(self)
        self.store = UploadStore(self.directory, self.disk, durable=False)
        self.publisher = Publisher(self.store, self.disk, self.config.completeDirectory)
        self.inventory = Inventory(self.store, self.config)
        self.events: List[Tuple[str, str]] = []
        self.store.events.subscribe(lambda event, record: self.events.append((event, record.id)))

    @defer.inlineCallbacks
    def active(self, data: bytes, length: int, protocol: str = "tus", **kw: Any) -> Any:
        """An unfinished upload holding C{data}, its offset recorded."""
        record = yield self.store.create(protocol, length, 86400.0, **kw)
        upload = self.store.open(record.id)
        try:
            os.pwrite(upload.fd, data, 0)

            def advance(r: Any) -> None:
                r.offset = len(data)

            record = yield self.store.commit(upload, advance)
        finally:
            upload.close()
        return record

    @defer.inlineCallbacks
    def published(self, data: bytes, name: str = "report.pdf") -> Any:
        """A finished facade upload, moved to the completed area."""
        record = yield self.active(data, len(data), protocol="facade")
        upload = self.store.open(record.id)
        try:
            record = yield defer.Deferred.fromCoroutine(
                self.publisher.publish(upload, name, len(data), name))
        finally:
            upload.close()
        return record

    @defer.inlineCallbacks
    def damagedStore(self) -> Any:
        """
        A store with one of each damage, made for real, and healthy uploads
        beside them: C{{kind: upload id}} and the healthy ids.
        """
        damage: Dict[str, Any] = {}
        healthy = [(yield self.active(b"fine", 10)).id, (yield self.published(b"all good", "ok.txt")).id]

        lost = yield self.active(b"abc", 10)
        os.unlink(self.store.dataPath(lost.id))
        damage["record-without-data"] = lost.id

        cut = yield self.active(b"0123456789", 20)
        os.truncate(self.store.dataPath(cut.id), 4)
        damage["offset-beyond-data"] = cut.id

        rotten = yield self.published(b"the published bytes")
        assert rotten.published is not None
        with open(rotten.published.path, "r+b") as f:
            f.write(b"T")
        damage["sha256-mismatch"] = rotten.id

        garbled = yield self.active(b"xyz", 10)
        with open(self.store.recordPath(garbled.id), "wb") as f:
            f.write(b'{"id": "half a reco')
        damage["unreadable-record"] = garbled.id

        orphan = yield self.active(b"orphaned", 10)
        os.unlink(self.store.recordPath(orphan.id))
        aged(self.store.dataPath(orphan.id))
        damage["data-without-record"] = orphan.id

        # A record lock left behind: an upload forgotten while its lock
        # file's removal failed.
        forgotten = yield self.active(b"gone", 10)
        lock = self.store.recordPath(forgotten.id) + ".lock"
        self.assertTrue(os.path.exists(lock))  # commit made it
        os.unlink(self.store.recordPath(forgotten.id))
        os.unlink(self.store.dataPath(forgotten.id))
        aged(lock)
        damage["stale-lock"] = forgotten.id

        # A record write cut short (the temp file save() renames), and one
        # in the completed area, and one in the hook spool.
        temps = [self.store.recordPath(healthy[0]) + ".4242.deadbeef.tmp",
                 os.path.join(self.config.completeDirectory, ".ok.txt.json.4242.tmp"),
                 os.path.join(self.directory, "hooks", "1.0-abc.json.tmp")]
        os.makedirs(os.path.dirname(temps[2]))
        for path in temps:
            with open(path, "wb") as f:
                f.write(b"{")
            aged(path)
        damage["stale-temp"] = temps

        # Young strays are left be: an upload may be being created.
        young = yield self.active(b"young", 10)
        os.unlink(self.store.recordPath(young.id))
        return damage, healthy, young.id

    def kinds(self, problems: List[Any]) -> List[Tuple[str, Any]]:
        return [(p.kind, p.uploadId) for p in problems]


class FsckTests(InventoryTestCase):
    @defer.inlineCallbacks
    def test_everyDamageFoundThenRepaired(self) -> Any:
        damage, healthy, young = yield self.damagedStore()
        problems = yield self.disk.run(self.inventory.check)
        found = self.kinds(problems)
        self.assertEqual(sorted({kind for kind, _ in found}), sorted(PROBLEMS))
        for kind in PROBLEMS:
            if kind != "stale-temp":
                self.assertIn((kind, damage[kind]), found)
        self.assertEqual(sorted(p.path for p in problems if p.kind == "stale-temp"),
                         sorted(damage["stale-temp"]))
        self.assertEqual(len(problems), len(PROBLEMS) + 2)  # three temps
        for uploadId in healthy + [young]:
            self.assertNotIn(uploadId, [p.uploadId for p in problems if p.kind != "stale-temp"])
        self.assertFalse(any(p.busy for p in problems))

        # Checking changed nothing.
        self.assertTrue(os.path.exists(self.store.recordPath(damage["record-without-data"])))
        self.assertEqual(self.store.get(damage["offset-beyond-data"]).offset, 10)

        results = {}
        for problem in problems:
            results[(problem.kind, problem.path)] = yield self.disk.run(self.inventory.repair, problem)
        yield deferLater(0)  # the store's events reach the reactor

        self.assertEqual(self.store.get(damage["record-without-data"]).state, EXPIRED)
        cut = self.store.get(damage["offset-beyond-data"])
        self.assertEqual((cut.state, cut.offset), (ACTIVE, 4))
        rotten = self.store.get(damage["sha256-mismatch"])
        self.assertEqual(rotten.state, TERMINATED)
        assert rotten.published is not None
        self.assertFalse(os.path.exists(rotten.published.path))
        self.assertFalse(os.path.exists(rotten.published.path + ".json"))
        quarantined = sorted(os.listdir(self.inventory.quarantine))
        garbled = damage["unreadable-record"]
        self.assertEqual(quarantined, sorted([
            f"{rotten.id}.{rotten.published.name}", f"{rotten.id}.{rotten.published.name}.json",
            garbled + ".json", garbled + ".data"]))
        self.assertIn(("post-terminate", rotten.id), self.events)
        self.assertFalse(os.path.exists(self.store.recordPath(garbled)))
        self.assertFalse(os.path.exists(self.store.dataPath(damage["data-without-record"])))
        self.assertFalse(os.path.exists(self.store.recordPath(damage["stale-lock"]) + ".lock"))
        for path in damage["stale-temp"]:
            self.assertFalse(os.path.exists(path))
        self.assertTrue(all(not r.startswith("left alone") for r in results.values()), results)

        # The healthy uploads are as they were, and nothing is left to mend.
        self.assertEqual(self.store.get(healthy[0]).offset, 4)
        published = self.store.get(healthy[1]).published
        assert published is not None
        self.assertTrue(os.path.exists(published.path))
        self.assertTrue(os.path.exists(self.store.dataPath(young)))
        again = yield self.disk.run(self.inventory.check)
        self.assertEqual(again, [])

    @defer.inlineCallbacks
    def test_aNameTakenByALaterUploadIsNotTheEarliersToJudge(self) -> Any:
        """
        The application took A's published photo.jpg (and its sidecar);
        B was then published as photo.jpg.  A's record still names that
        path: fsck must not call B's file A's corrupt one (it moved B's file
        to the quarantine before), and ending A must not remove it.
        """
        first = yield self.published(b"the first photo", "photo.jpg")
        assert first.published is not None
        os.unlink(first.published.path)
        os.unlink(first.published.path + ".json")
        second = yield self.published(b"the second photo", "photo.jpg")
        assert second.published is not None
        self.assertEqual(second.published.path, first.published.path)
        problems = yield self.disk.run(self.inventory.check)
        self.assertEqual(problems, [])
        self.assertTrue(CompletedFiles.owns(second.published.path, second.id, second.created))
        self.assertFalse(CompletedFiles.owns(first.published.path, first.id, first.created))

    @defer.inlineCallbacks
    def test_anUploadAWriterHoldsIsReportedBusyAndNeverRepaired(self) -> Any:
        cut = yield self.active(b"0123456789", 20)
        os.truncate(self.store.dataPath(cut.id), 4)
        orphan = yield self.active(b"orphaned", 10)
        os.unlink(self.store.recordPath(orphan.id))
        aged(self.store.dataPath(orphan.id))
        # Held the way a request holds them: the exclusive lock of a tus
        # PATCH (taken as the store takes it: store.open itself would pull
        # the offset back first), the shared lock of Resumable.js chunk writers.
        writer = self.store.tryLock(cut.id)
        assert writer is not None
        self.addCleanup(os.close, writer)
        fd = os.open(self.store.dataPath(orphan.id), os.O_RDONLY)
        self.addCleanup(os.close, fd)
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_SH)

        problems = yield self.disk.run(self.inventory.check)
        self.assertEqual(sorted(self.kinds(problems)),
                         sorted([("offset-beyond-data", cut.id), ("data-without-record", orphan.id)]))
        self.assertTrue(all(p.busy for p in problems))
        for problem in problems:
            done = yield self.disk.run(self.inventory.repair, problem)
            self.assertEqual(done, "left alone: a writer holds it")
            # Even when the look missed the writer (another host's lock),
            # the repair itself takes the lock and backs off.
            problem.busy = False
            done = yield self.disk.run(self.inventory.repair, problem)
            self.assertEqual(done, "left alone: a writer holds it")
        self.assertEqual(self.store.get(cut.id).offset, 10)
        self.assertTrue(os.path.exists(self.store.dataPath(orphan.id)))

    @defer.inlineCallbacks
    def test_withoutHashesPublishedFilesAreNotRead(self) -> Any:
        rotten = yield self.published(b"the published bytes")
        assert rotten.published is not None
        with open(rotten.published.path, "r+b") as f:
            f.write(b"T")
        problems = yield self.disk.run(self.inventory.check, hashes=False)
        self.assertEqual(problems, [])


class ListingTests(InventoryTestCase):
    @defer.inlineCallbacks
    def test_statesFiltersAndAges(self) -> Any:
        start = time.time()
        self.store.clock = lambda: start - 3 * 86400
        old = yield self.active(b"old", 10, protocol="resumable")
        self.store.clock = lambda: start
        fresh = yield self.active(b"fresh bytes", 100, subject="alice",
                                  metadata={"filename": "cat.jpg"})
        done = yield self.published(b"finished")
        ended = yield self.active(b"x", 10)
        yield self.disk.run(self.inventory.end, ended.id, TERMINATED)

        everything = yield self.disk.run(self.inventory.uploads)
        self.assertEqual([s.id for s in everything][0], old.id)  # oldest first
        states = {s.id: s.state for s in everything}
        # The old one's deadline passed: expired to any client already,
        # though no sweep has run.
        self.assertEqual(states, {old.id: EXPIRED, fresh.id: ACTIVE, done.id: COMPLETE,
                                  ended.id: TERMINATED})
        self.assertEqual(self.store.get(old.id).state, ACTIVE)
        mine = [s for s in everything if s.id == fresh.id][0]
        self.assertEqual((mine.subject, mine.size, mine.offset, mine.filename, mine.writing),
                         ("alice", 100, 11, "cat.jpg", False))
        finished = [s for s in everything if s.id == done.id][0]
        assert done.published is not None
        self.assertEqual((finished.published, finished.sha256),
                         (done.published.path, done.published.sha256))

        def ids(found: Any) -> List[str]:
            return sorted(s.id for s in found)

        only = yield self.disk.run(self.inventory.uploads, [ACTIVE])
        self.assertEqual(ids(only), [fresh.id])
        only = yield self.disk.run(self.inventory.uploads, [EXPIRED, TERMINATED])
        self.assertEqual(ids(only), sorted([old.id, ended.id]))
        only = yield self.disk.run(self.inventory.uploads, None, "resumable")
        self.assertEqual(ids(only), [old.id])
        only = yield self.disk.run(self.inventory.uploads, None, None, 2 * 86400)
        self.assertEqual(ids(only), [old.id])

        stats = yield self.disk.run(self.inventory.stats)
        self.assertEqual((stats.uploads, stats.states, stats.protocols), (
            4, {ACTIVE: 1, COMPLETE: 1, EXPIRED: 1, TERMINATED: 1},
            {"tus": 2, "resumable": 1, "facade": 1}))
        self.assertEqual((stats.receivedBytes, stats.publishedBytes), (11, 8))
        self.assertGreater(stats.diskFree, 0)

    @defer.inlineCallbacks
    def test_aWriterIsSeenWithoutTakingItsLock(self) -> Any:
        record = yield self.active(b"abc", 10)
        writer = self.store.open(record.id)
        try:
            st = os.stat(self.store.dataPath(record.id))
            self.assertIn((st.st_dev, st.st_ino), heldLocks())
            found = yield self.disk.run(self.inventory.uploads)
            self.assertTrue(found[0].writing)
        finally:
            writer.close()
        found = yield self.disk.run(self.inventory.uploads)
        self.assertFalse(found[0].writing)
        shown = yield self.disk.run(self.inventory.show, record.id)
        self.assertEqual((shown["dataFileSize"], shown["record"]["offset"]), (10, 3))


class EndTests(InventoryTestCase):
    @defer.inlineCallbacks
    def test_expireAndDeleteAsTheJanitorAndDeleteDo(self) -> Any:
        record = yield self.active(b"abc", 10)
        ended = yield self.disk.run(self.inventory.end, record.id, EXPIRED)
        yield deferLater(0)
        self.assertEqual(ended.state, EXPIRED)
        self.assertFalse(os.path.exists(self.store.dataPath(record.id)))
        self.assertIn(("post-expire", record.id), self.events)
        yield self.assertFailure(self.disk.run(self.inventory.end, record.id, TERMINATED), UploadGone)

        done = yield self.published(b"finished")
        yield self.assertFailure(self.disk.run(self.inventory.end, done.id, EXPIRED), Conflict)
        ended = yield self.disk.run(self.inventory.end, done.id, TERMINATED)
        yield deferLater(0)
        self.assertEqual(ended.state, TERMINATED)
        self.assertIn(("post-terminate", done.id), self.events)
        # The application's file stays: it was handed over.
        assert done.published is not None
        self.assertTrue(os.path.exists(done.published.path))

    @defer.inlineCallbacks
    def test_aBusyUploadIsLeftAlone(self) -> Any:
        record = yield self.active(b"abc", 10)
        writer = self.store.open(record.id)
        self.addCleanup(writer.close)
        yield self.assertFailure(self.disk.run(self.inventory.end, record.id, EXPIRED), UploadLocked)
        self.assertEqual(self.store.get(record.id).state, ACTIVE)
        self.assertTrue(os.path.exists(self.store.dataPath(record.id)))


class OfflineHookTests(InventoryTestCase):
    hooks = [{"url": "http://127.0.0.1:9/hook", "events": ["post-terminate"]}]

    @defer.inlineCallbacks
    def test_anOfflineStoreSpoolsTheHookAChunkdWouldSend(self) -> Any:
        """
        C{chunkctl} runs no reactor and no hook sender: ending an upload
        spools the delivery, which a chunkd process then sends.
        """
        record = yield self.active(b"abc", 10)
        offline = Inventory(offlineStore(self.config), self.config)
        ended = offline.end(record.id, TERMINATED)
        self.assertEqual(ended.state, TERMINATED)
        spool = os.path.join(self.directory, "hooks")
        names = os.listdir(spool)
        self.assertEqual(len(names), 1)
        with open(os.path.join(spool, names[0])) as f:
            entry = json.load(f)
        self.assertEqual((entry["url"], entry["event"]), ("http://127.0.0.1:9/hook", "post-terminate"))
        self.assertEqual(json.loads(entry["body"])["upload"]["id"], record.id)
