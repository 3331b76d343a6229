"""
The janitor against real records and files: expiry, tombstones, completed
uploads, orphans, busy uploads, and a failing record.
"""

from __future__ import annotations

import os
import time
from typing import Any, List, Tuple

from twisted.internet import defer, reactor, task

from chunkd.janitor import Janitor
from chunkd.once import OneShotResult
from tests.helpers import TusTestCase, deferLater, patchHead, rawRequest

HOUR = 3600.0


class JanitorTests(TusTestCase):
    overrides = {"janitor.expire_after": "1h", "janitor.tombstone_ttl": "1d"}

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.janitor = Janitor(self.store, self.config, reactor)
        self.events: List[Tuple[str, str]] = []
        self.store.events.subscribe(lambda event, record: self.events.append((event, record.id)))

    def later(self, seconds: float) -> None:
        start = time.time()
        self.store.clock = lambda: start + seconds

    @defer.inlineCallbacks
    def test_expiresIdleUploadsAndLeavesFreshOnes(self) -> Any:
        old = yield self.createId(10)
        yield self.patch(old, 0, b"abc")
        self.later(2 * HOUR)
        fresh = yield self.createId(10)  # created "now", two hours on
        report = yield self.janitor.sweep()
        report = self.janitor.lastReport
        self.assertEqual((report.expired, report.active), (1, 1))
        self.assertFalse(os.path.exists(self.store.dataPath(old)))
        self.assertEqual(self.store.get(old).state, "expired")
        r = yield self.head(old)
        self.assertEqual(r.code, 410)
        r = yield self.head(fresh)
        self.assertEqual(r.code, 200)
        yield deferLater(0)
        self.assertIn(("post-expire", old), self.events)

    @defer.inlineCallbacks
    def test_expiryAgreesWithUploadExpires(self) -> Any:
        uploadId = yield self.createId(10)
        announced = self.store.get(uploadId).expires
        self.store.clock = lambda: announced - 1
        yield self.janitor.sweep()
        self.assertEqual(self.store.get(uploadId).state, "active")
        self.store.clock = lambda: announced + 1
        yield self.janitor.sweep()
        self.assertEqual(self.store.get(uploadId).state, "expired")

    @defer.inlineCallbacks
    def test_neverTouchesAnUploadBeingWritten(self) -> Any:
        uploadId = yield self.createId(100)
        # A PATCH whose body is still coming: it holds the upload's lock.
        pending = rawRequest(self.port.getHost().port, patchHead(uploadId, 0, 100) + b"x" * 10, closeAfter=0.5)
        yield deferLater(0.1)
        self.later(10 * HOUR)
        yield self.janitor.sweep()
        self.assertEqual(self.janitor.lastReport.busy, 1)
        self.assertTrue(os.path.exists(self.store.dataPath(uploadId)))
        yield pending
        yield deferLater(0.1)
        self.assertEqual(self.store.get(uploadId).offset, 10)

    @defer.inlineCallbacks
    def test_tombstonesAreForgottenAfterTheirTtl(self) -> Any:
        uploadId = yield self.createId(10)
        r = yield self.client.delete(self.url(f"/files/{uploadId}"), headers={"Tus-Resumable": "1.0.0"})
        yield r.content()
        yield self.janitor.sweep()
        self.assertEqual(self.store.get(uploadId).state, "terminated")
        self.later(2 * 86400)
        yield self.janitor.sweep()
        self.assertEqual(self.janitor.lastReport.forgotten, 1)
        r = yield self.head(uploadId)
        self.assertEqual(r.code, 404)

    @defer.inlineCallbacks
    def test_completedKeptUnlessConfigured(self) -> Any:
        uploadId = yield self.createId(3)
        yield self.patch(uploadId, 0, b"abc")
        self.later(400 * 86400)
        yield self.janitor.sweep()
        self.assertTrue(os.path.exists(self.store.dataPath(uploadId)))
        from dataclasses import replace

        self.janitor.reconfigure(replace(self.config, janitor=replace(self.config.janitor, keep_completed=86400.0)))
        yield self.janitor.sweep()
        self.assertEqual(self.janitor.lastReport.removedCompleted, 1)
        self.assertFalse(os.path.exists(self.store.dataPath(uploadId)))
        self.assertFalse(os.path.exists(self.store.recordPath(uploadId)))

    def test_aPublishedNameNowAnotherUploadsIsLeftAlone(self) -> None:
        """
        Removing a completed upload kept long enough removes its published
        file only while that file is still its own: after the application
        took it, the name may hold a later upload's file (its sidecar names
        that upload).
        """
        from chunkd.janitor import SweepReport
        from chunkd.store import Publication, UploadRecord

        complete = self.config.completeDirectory
        os.makedirs(complete, exist_ok=True)
        path = os.path.join(complete, "photo.jpg")
        with open(path, "wb") as f:
            f.write(b"the later upload's photo")
        with open(path + ".json", "w") as f:
            f.write('{"id": "%s", "created": 2.0}' % ("b" * 32))
        earlier = UploadRecord(id="a" * 32, protocol="facade", length=5, created=1.0, state="complete",
                               published=Publication(path, "photo.jpg", 5, "00", 1.5))
        self.janitor._removeCompleted(earlier, SweepReport())
        self.assertTrue(os.path.exists(path))
        self.assertTrue(os.path.exists(path + ".json"))
        mine = UploadRecord(id="b" * 32, protocol="facade", length=5, created=2.0, state="complete",
                            published=Publication(path, "photo.jpg", 5, "00", 2.5))
        self.janitor._removeCompleted(mine, SweepReport())
        self.assertFalse(os.path.exists(path))

    @defer.inlineCallbacks
    def test_orphansRemovedOnlyWhenOld(self) -> Any:
        orphan = os.path.join(self.store.uploads, "a" * 32 + ".data")
        temp = os.path.join(self.store.uploads, "b" * 32 + ".json.123.abcd.tmp")
        for path in (orphan, temp):
            with open(path, "wb") as f:
                f.write(b"x")
        yield self.janitor.sweep()
        self.assertTrue(os.path.exists(orphan))  # could be a creation in progress
        self.later(2 * HOUR)
        yield self.janitor.sweep()
        self.assertEqual(self.janitor.lastReport.orphans, 2)
        self.assertFalse(os.path.exists(orphan) or os.path.exists(temp))

    @defer.inlineCallbacks
    def test_aSweepRestoresTheSpaceReserve(self) -> Any:
        """
        A full disk drew on the reserve (chunkd.store.RESERVE_SIZE); once
        there is room again, the next sweep makes it whole.
        """
        from chunkd.store import RESERVE_SIZE

        yield self.createId(10)
        os.truncate(self.store.reservePath, 0)
        yield self.janitor.sweep()
        self.assertEqual(os.path.getsize(self.store.reservePath), RESERVE_SIZE)
        self.assertEqual(self.janitor.lastReport.orphans, 0)

    @defer.inlineCallbacks
    def test_aBadRecordDoesNotStopTheSweep(self) -> Any:
        good = yield self.createId(10)
        bad = os.path.join(self.store.uploads, "c" * 32 + ".json")
        with open(bad, "w") as f:
            f.write("{not json")
        self.later(2 * HOUR)
        yield self.janitor.sweep()
        self.flushLoggedErrors()
        self.assertEqual(self.janitor.lastReport.errors, 1)
        self.assertEqual(self.store.get(good).state, "expired")

    @defer.inlineCallbacks
    def test_serviceSweepsOnItsInterval(self) -> Any:
        from dataclasses import replace

        self.janitor.config = replace(self.config, janitor=replace(self.config.janitor, interval=0.05))
        uploadId = yield self.createId(10)
        self.later(2 * HOUR)
        self.janitor.startService()
        for _ in range(40):
            if self.store.get(uploadId).state == "expired":
                break
            yield deferLater(0.05)
        yield self.janitor.stopService()
        self.assertEqual(self.store.get(uploadId).state, "expired")


class BatchTests(TusTestCase):
    """
    A sweep goes a bounded batch of directory entries per disk-pool job:
    with a million uploads it holds a disk thread for one batch at a time,
    and a stop (SIGTERM) waits for one batch, not for the whole store.
    """

    overrides = {"janitor.expire_after": "1h"}

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.ids = []
        for _ in range(3):
            uploadId = yield self.createId(10)
            self.ids.append(uploadId)
        start = time.time()
        self.store.clock = lambda: start + 2 * HOUR  # every upload is due to expire
        self.batches: List[int] = []
        run = self.store.disk.run

        def counted(f: Any, *args: Any) -> Any:
            if getattr(f, "__name__", "") == "_sweepBatch":
                self.batches.append(len(self.batches))
            return run(f, *args)

        # (Not self.patch: on this test case, that sends a tus PATCH.)
        self.store.disk.run = counted  # type: ignore[method-assign]
        self.addCleanup(setattr, self.store.disk, "run", run)

    @defer.inlineCallbacks
    def test_aSweepGoesABatchAtATime(self) -> Any:
        entries = len(os.listdir(self.store.uploads))
        janitor = Janitor(self.store, self.config, reactor, batch=2)
        yield janitor.sweep()
        self.assertEqual(janitor.lastReport.expired, 3)
        self.assertEqual(len(self.batches), entries // 2 + 1)
        self.assertEqual([self.store.get(i).state for i in self.ids], ["expired"] * 3)

    @defer.inlineCallbacks
    def test_aStopWaitsForOneBatchNotTheSweep(self) -> Any:
        janitor = Janitor(self.store, self.config, reactor, batch=1)
        janitor.startService()  # sweeps at once
        yield janitor.stopService()
        self.assertLessEqual(len(self.batches), 1)
        states = [self.store.get(i).state for i in self.ids]
        self.assertLessEqual(states.count("expired"), 1)
        # The next sweep does the rest.
        janitor = Janitor(self.store, self.config, reactor)
        yield janitor.sweep()
        self.assertEqual(janitor.lastReport.expired, 3 - states.count("expired"))

    @defer.inlineCallbacks
    def test_theFirstSweepWaitsForTheStartupCheck(self) -> Any:
        """
        One pass over every record at a time: the janitor's sweep starts
        once the start-up check (L{chunkd.services.Reconciler}) has ended,
        and a stop meanwhile does not wait for the check.
        """
        check: OneShotResult[None] = OneShotResult()
        self.store.startupCheck = check
        janitor = Janitor(self.store, self.config, reactor)
        janitor.startService()  # sweeps at once, or would
        yield deferLater(0.05)
        self.assertEqual(self.batches, [])
        stopped = janitor.stopService()
        self.assertTrue(stopped.called)
        janitor = Janitor(self.store, self.config, reactor)
        sweeping = janitor.sweep()
        yield deferLater(0.05)
        self.assertEqual((self.batches, sweeping.called), ([], False))
        check.fire(None)
        yield sweeping
        self.assertEqual(janitor.lastReport.expired, 3)


class RestTests(TusTestCase):
    """
    A long sweep earns a rest (REST_FACTOR times its length) before the
    next, whatever janitor.interval says: with a million uploads the
    janitor must not sweep all the time.
    """

    @defer.inlineCallbacks
    def test_aLongSweepIsFollowedByARest(self) -> Any:
        clock = task.Clock()
        janitor = Janitor(self.store, self.config, clock)
        sweeps: List[float] = []
        real = janitor._sweepInBatches

        def timed(now: float) -> Any:
            sweeps.append(clock.seconds())
            d = real(now)
            d.addCallback(lambda report: setattr(report, "seconds", 30.0) or report)
            return d

        janitor._sweepInBatches = timed  # type: ignore[method-assign]
        janitor.startService()  # the loop's first tick sweeps at once
        self.addCleanup(janitor.stopService)
        yield janitor._sweeping
        self.assertEqual(janitor.restUntil, 270.0)
        for _ in range(4):
            clock.advance(60)  # the loop's ticks at 60, 120, 180, 240: resting
        self.assertEqual(sweeps, [0.0])
        clock.advance(60)
        yield janitor._sweeping
        self.assertEqual(sweeps, [0.0, 300.0])
        yield janitor.sweep()  # asked for directly: at once
        self.assertEqual(len(sweeps), 3)

    @defer.inlineCallbacks
    def test_aShortSweepKeepsTheInterval(self) -> Any:
        clock = task.Clock()
        janitor = Janitor(self.store, self.config, clock)
        yield janitor.sweep()
        self.assertLess(janitor.restUntil, 60)  # a real sweep of an empty store: milliseconds
