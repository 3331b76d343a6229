"""
The janitor: expires abandoned uploads, forgets old tombstones, optionally
removes old completed uploads, and clears orphans.

Each sweep also restores the store's space reserve if a full disk drew on
it (L{chunkd.store.RESERVE_SIZE}).

A sweep reads every record, so with many uploads it is bulk disk work: it
runs in the disk pool, never on the reactor thread, a batch of
L{SWEEP_BATCH} directory entries per job (the directory streamed, never
listed whole: a million uploads' names would be some 200 MB at once), so it
holds a disk thread for one batch at a time and a stop ends it between two
batches instead of after the whole store; a C{LoopingCall} starts one every
C{janitor.interval}.  An upload is only ever removed while
the janitor holds its exclusive lock, so an upload that is being written --
however long ago its last byte arrived -- is never touched.  A failing
record, or a failing sweep, is logged and the next one runs anyway.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generator, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from chunkd.complete import CompletedFiles
from chunkd.config import Config
from chunkd.errors import NO_SPACE
from chunkd.store import (
    ACTIVE,
    COMPLETE,
    EXPIRED,
    TERMINATED,
    UploadRecord,
    UploadStore,
    expiryDeadline,
    isUploadId,
)


#: directory entries (records, data files, ...) a sweep handles per disk-pool job
SWEEP_BATCH = 1000

#: after a sweep that took t seconds, the janitor rests at least this many
#: times t before the next, whatever janitor.interval says: with a million
#: uploads one sweep takes about 45 s of CPU, and sweeping every 60 s would
#: spend three quarters of the daemon on it.  It then sweeps a tenth of
#: the time at most (expiry runs that much later, minutes, not hours).
REST_FACTOR = 9


@dataclass
class SweepReport:
    """What one sweep found and did (logged, and read by the metrics)."""

    active: int = 0
    expired: int = 0
    busy: int = 0
    forgotten: int = 0
    removedCompleted: int = 0
    orphans: int = 0
    errors: int = 0
    seconds: float = 0.0

    def asDict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


class Janitor(Service):
    name = "janitor"
    log = Logger()

    def __init__(self, store: UploadStore, config: Config, reactor: Any, batch: int = SWEEP_BATCH) -> None:
        self.store = store
        self.batch = batch
        #: set by a stop: the sweep under way ends after its current batch
        self._halting = False
        #: the first sweep waits for the start-up check to end
        self._waitingForCheck = False
        self.config = config
        self.reactor = reactor
        self.lastReport: Optional[SweepReport] = None
        #: when the last sweep ended (epoch seconds), for the admin view
        self.lastSweepAt: Optional[float] = None
        self.onReport: Optional[Callable[[SweepReport], None]] = None
        self._loop: Optional[LoopingCall] = None
        self._sweeping: Optional[Deferred[Any]] = None
        #: no sweep starts before this time (the reactor's clock): see
        #: L{REST_FACTOR}
        self.restUntil = 0.0

    def startService(self) -> None:
        super().startService()
        self._halting = False
        self._startLoop()

    def _startLoop(self) -> None:
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.config.janitor.interval, now=True)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._halting = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._sweeping is None or self._waitingForCheck:
            # A sweep still waiting for the start-up check ends, without a
            # disk job, once the check (stopped later) does.
            return succeed(None)
        return self._sweeping

    def reconfigure(self, config: Config) -> None:
        """
        Take new times; restart the loop only if the interval changed.
        """
        old, self.config = self.config, config
        if self.running and old.janitor.interval != config.janitor.interval:
            if self._loop is not None and self._loop.running:
                self._loop.stop()
            self._startLoop()

    def _tick(self) -> Deferred[Any]:
        """The loop's sweep, unless resting after a long one (L{REST_FACTOR})."""
        if self.reactor.seconds() < self.restUntil:
            return succeed(None)
        return self.sweep()

    def sweep(self) -> Deferred[Any]:
        """
        One sweep, in the disk pool.  Never fails: an error is logged, so the
        C{LoopingCall} keeps running.
        """
        if self._sweeping is not None:
            return succeed(None)  # the previous sweep is still going
        d = self._sweepInBatches(self.store.clock())

        def done(report: SweepReport) -> None:
            self.lastReport = report
            self.lastSweepAt = time.time()
            self.restUntil = self.reactor.seconds() + REST_FACTOR * report.seconds
            if self.onReport is not None:
                self.onReport(report)
            if report.expired or report.forgotten or report.orphans or report.removedCompleted or report.errors:
                self.log.info(
                    "janitor: {expired} expired, {forgotten} tombstones forgotten, "
                    "{removedCompleted} completed removed, {orphans} orphans, {busy} busy, "
                    "{errors} errors, {active} active, in {seconds:.3f}s",
                    **report.asDict(),
                )

        def failed(failure: Any) -> None:
            self.log.failure("janitor sweep failed; the next one runs as planned", failure)

        def finished(result: Any) -> None:
            self._sweeping = None

        d.addCallbacks(done, failed)
        d.addBoth(finished)
        self._sweeping = d
        return d

    @inlineCallbacks
    def _sweepInBatches(self, now: float) -> Any:
        report = SweepReport()
        check = self.store.startupCheck
        if check is not None and not check.fired:
            # One pass over every record at a time: the start-up check's
            # first (L{chunkd.services.Reconciler}).  A stop meanwhile does
            # not wait for it (L{stopService}).
            self._waitingForCheck = True
            try:
                yield check.whenFired()
            finally:
                self._waitingForCheck = False
            now = self.store.clock()
        started = time.monotonic()
        if self._halting:
            return report
        yield self.store.disk.run(self._keepReserve)
        entries = self._entries()
        try:
            while not self._halting:
                more = yield self.store.disk.run(self._sweepBatch, entries, now, report)
                if not more:
                    break
        finally:
            entries.close()
        report.seconds = time.monotonic() - started
        return report

    # -- in the disk pool -----------------------------------------------------

    def _keepReserve(self) -> None:
        try:
            self.store.keepReserve()
        except OSError as e:
            # Still full: the next sweep (or creation) tries again.
            if e.errno not in NO_SPACE:
                self.log.warn("janitor could not restore the space reserve: {error}", error=str(e))

    def _entries(self) -> Generator[os.DirEntry, None, None]:
        with os.scandir(self.store.uploads) as entries:
            yield from entries

    def _sweepBatch(self, entries: Generator[os.DirEntry, None, None], now: float, report: SweepReport) -> bool:
        """
        Handle the next L{batch} entries.

        @return: whether any are left.
        """
        for _ in range(self.batch):
            entry = next(entries, None)
            if entry is None:
                return False
            try:
                self._sweepEntry(entry, now, report)
            except Exception:
                report.errors += 1
                self.log.failure("janitor could not handle {name}", name=entry.name)
        return True

    def _sweepEntry(self, entry: os.DirEntry, now: float, report: SweepReport) -> None:
        name = entry.name
        stem = name.split(".", 1)[0]
        janitor = self.config.janitor
        if name.endswith(".json") and isUploadId(stem):
            self._sweepRecord(self.store.get(stem), now, report)
            return
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            return
        if age < janitor.orphan_after or self.store.stray(name) is None:
            return
        os.unlink(entry.path)
        report.orphans += 1

    def _sweepRecord(self, record: UploadRecord, now: float, report: SweepReport) -> None:
        janitor = self.config.janitor
        if record.state == ACTIVE:
            deadline = expiryDeadline(record, janitor.expire_after)
            if deadline is None or now < deadline:
                report.active += 1
                return
            self._underLock(record.id, report, lambda r: self._expire(record.id, now, r))
        elif record.state in (TERMINATED, EXPIRED):
            if now - record.updated >= janitor.tombstone_ttl:
                self._forget(record.id)
                report.forgotten += 1
        elif record.state == COMPLETE and janitor.keep_completed:
            if now - record.updated >= janitor.keep_completed:
                self._underLock(record.id, report, lambda r: self._removeCompleted(record, r))

    def _underLock(self, uploadId: str, report: SweepReport, action: Callable[[SweepReport], None]) -> None:
        with self.store.exclusively(uploadId) as held:
            if not held:
                report.busy += 1  # being written: leave it alone
                return
            action(report)

    def _expire(self, uploadId: str, now: float, report: SweepReport) -> None:
        # Re-read under the lock: a write may have refreshed it meanwhile.
        record = self.store.get(uploadId)
        deadline = expiryDeadline(record, self.config.janitor.expire_after)
        if record.state == ACTIVE and deadline is not None and now >= deadline:
            # Another process's janitor may have got there first.
            if self.store.terminate(uploadId, state=EXPIRED):
                report.expired += 1
        else:
            report.active += 1

    def _removeCompleted(self, record: UploadRecord, report: SweepReport) -> None:
        published = record.published.path if record.published is not None else None
        # Only a file still this upload's: once the application took it, a
        # later upload may have been published under the same name.
        if (published is not None and published.startswith(self.config.completeDirectory + os.sep)
                and CompletedFiles.owns(published, record.id, record.created)):
            for path in (published, published + ".json"):
                if os.path.exists(path):
                    os.unlink(path)
        self._forget(record.id)
        report.removedCompleted += 1

    def _forget(self, uploadId: str) -> None:
        for path in (self.store.dataPath(uploadId), self.store.recordPath(uploadId),
                     self.store.recordPath(uploadId) + ".lock"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
