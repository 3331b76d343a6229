"""
The disk writer: request bodies leave the reactor thread here.

L{DiskService} owns a dedicated thread pool (not the reactor's shared one,
which DNS look-ups also use) so a slow disk can never starve name
resolution, and so shutdown can wait for every queued write.

L{OffsetWriter} takes one stream of bytes -- one request body -- and writes
it at increasing offsets of a file.  It keeps exactly one batch in flight,
so writes of a stream land in order and digests fed in the thread see the
bytes in order; what arrives meanwhile is queued and sent as the next batch
with C{pwritev}, which writes many buffers in one system call without
joining (copying) them.  Several writers on one file (chunks of one upload
arriving at once) run in parallel.

The writer knows nothing of protocols; it is told where to write and which
producer to pause when its queue passes the high-water mark.
"""

from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Sequence, Tuple
from weakref import WeakSet

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from chunkd.once import OneShotResult

# pwritev accepts at most IOV_MAX buffers per call (1024 on Linux).
_IOV_MAX = 1024


class DiskService(Service):
    """
    The thread pool that does chunkd's file I/O.

    @ivar pwritev: the function that writes a batch; tests replace it with
        a slow one to show that queues stay bounded, or a failing one.
    @ivar fdatasync: the function that makes an upload's written bytes
        durable before they are recorded (L{chunkd.store.UploadStore.commit});
        tests replace it with a failing one.
    @ivar startWriteback: starts writing each batch back to the disk once
        written, for durable storage (L{chunkd.writeback}), or C{None}.
        Together these are the OS calls an upload's bytes go through: the
        seam for injected faults.
    """

    name = "disk"
    log = Logger()
    #: bytes accepted by all writers and not yet written, now and at most.
    queued = 0
    peakQueued = 0
    #: the global write budget (C{disk.max_buffered}; 0: none): the moment
    #: one read takes the total past it, every streaming writer pauses its
    #: socket, however little it holds itself, so a thousand uploads on a
    #: slow disk cannot hold a thousand high-water marks of memory -- nor a
    #: thousand more socket reads, as they would if each paused only at
    #: its own next read (issue 14, W6).  They resume once the total is
    #: back under three quarters of it.
    maxBuffered = 0

    def __init__(self, reactor: Any, threads: int) -> None:
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=1, maxthreads=threads, name="chunkd-disk")
        self.pwritev: Callable[[int, Sequence[Any], int], int] = os.pwritev
        self.fdatasync: Callable[[int], None] = os.fdatasync
        #: called with (fd, offset, length) after each batch is written,
        #: with durable storage (L{chunkd.writeback}); None: not at all
        self.startWriteback: Optional[Callable[[int, int, int], None]] = None
        self.outstanding = 0
        self._drained: Optional[OneShotResult[None]] = None
        #: writers paused by the budget, resumed in order once under it
        self._overBudget: List["OffsetWriter"] = []
        #: writers steering a producer (a socket), which the budget may
        #: pause; weak, so a writer dropped without detach() is not kept
        self._streaming: "WeakSet[OffsetWriter]" = WeakSet()
        #: run in the pool once no body has streamed for L{idleAfter}
        #: seconds (the daemon hands its free memory back:
        #: L{chunkd.allocator.giveBack})
        self.whenIdle: Optional[Callable[[], object]] = None
        self.idleAfter = 0.25
        self._idleCall: Any = None

    def overBudget(self, resuming: bool = False) -> bool:
        """
        Whether writers must pause (over the budget) -- or, C{resuming},
        stay paused (not yet back under three quarters of it).
        """
        if not self.maxBuffered:
            return False
        return self.queued > (self.maxBuffered * 3 // 4 if resuming else self.maxBuffered)

    def waitForBudget(self, writer: "OffsetWriter") -> None:
        if writer not in self._overBudget:
            self._overBudget.append(writer)

    def streamingBodies(self) -> int:
        """How many writers steer a socket now: bodies streaming to disk."""
        return len(self._streaming)

    def _streamEnded(self, writer: "OffsetWriter") -> None:
        self._streaming.discard(writer)
        if not self._streaming and self.whenIdle is not None and self._idleCall is None:
            self._idleCall = self.reactor.callLater(self.idleAfter, self._idle)

    def _idle(self) -> None:
        self._idleCall = None
        if not self._streaming and self.whenIdle is not None and self.running:
            d = self.run(self.whenIdle)
            d.addErrback(lambda f: self.log.failure("handing memory back", f))

    def holdEveryWriter(self) -> None:
        """
        Past the budget: pause every streaming writer's socket now, not at
        its next read.
        """
        for writer in list(self._streaming):
            writer._holdForBudget()

    def budgetFreed(self) -> None:
        """Some bytes were written: resume the writers the budget paused."""
        if not self._overBudget or self.overBudget(resuming=True):
            return
        waiting, self._overBudget = self._overBudget, []
        for writer in waiting:
            writer._mayResume()

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Deferred[None]:
        """
        Stop the pool once no job is outstanding -- including jobs that the
        callbacks of finished jobs queue (a flush followed by its commit) --
        so offsets recorded at shutdown are true.
        """
        super().stopService()
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self._idleCall = None
        from twisted.internet.threads import deferToThread

        # ThreadPool.stop joins its workers: do it off the reactor thread.
        return self.drained().addCallback(lambda _: deferToThread(self.pool.stop))

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Run C{f} in the disk pool; the Deferred fires on the reactor thread.
        """
        self.outstanding += 1
        d = deferToThreadPool(self.reactor, self.pool, f, *args, **kwargs)

        def finished(result: Any) -> Any:
            self.outstanding -= 1
            if not self.outstanding and self._drained is not None:
                # A callback down this chain may queue the next job: decide
                # on the next reactor turn.
                self.reactor.callLater(0, self._checkDrained)
            return result

        return d.addBoth(finished)

    def drained(self) -> Deferred[None]:
        """
        Fires once no disk job is outstanding.
        """
        if self._drained is None:
            self._drained = OneShotResult()
        d = self._drained.whenFired()
        self.reactor.callLater(0, self._checkDrained)
        return d

    def _checkDrained(self) -> None:
        if self.outstanding or self._drained is None:
            return
        drained, self._drained = self._drained, None
        drained.fire(None)

    def writer(
        self,
        fd: int,
        offset: int,
        highWater: int,
        lowWater: int,
        producer: Optional[IPushProducer] = None,
        digests: Sequence[Any] = (),
    ) -> "OffsetWriter":
        """
        A writer for one stream of bytes starting at C{offset} of C{fd}.
        """
        return OffsetWriter(self, fd, offset, highWater, lowWater, producer, digests, self.minBatch)

    #: bytes a writer gathers before it hands a batch to a thread (see
    #: L{OffsetWriter}); set from C{disk.min_batch}.
    minBatch = 512 * 1024


class OffsetWriter:
    """
    Writes one stream of bytes into a file at increasing offsets, in the
    disk pool, pausing C{producer} while more than C{highWater} bytes wait.

    @ivar written: bytes known to be in the file (not yet necessarily
        flushed to stable storage) -- after an error too: those of the
        failed batch that landed before it count.
    @ivar queued: bytes accepted but not yet written.
    @ivar peakQueued: the most bytes that ever waited (for tests and
        benchmarks: it shows flow control works).
    @ivar error: the first write error, after which further data is
        dropped; L{flush} reports it.
    """

    def __init__(
        self,
        disk: DiskService,
        fd: int,
        offset: int,
        highWater: int,
        lowWater: int,
        producer: Optional[IPushProducer],
        digests: Sequence[Any],
        minBatch: int = 0,
    ) -> None:
        self._disk = disk
        self._minBatch = minBatch
        self._pendingSize = 0
        self._fd = fd
        self._next = offset  # where the next queued byte goes
        self._highWater = highWater
        self._lowWater = lowWater
        self._producer = producer
        self._digests = list(digests)
        self._pending: List[Any] = []
        self._inFlight = False
        self._paused = False
        self._flushed: Optional[OneShotResult[int]] = None
        self.start = offset
        self.written = 0
        self.queued = 0
        self.peakQueued = 0
        self.error: Optional[BaseException] = None
        #: called with L{written} after every batch that reached the file
        self.progress: Optional[Callable[[int], None]] = None
        if producer is not None:
            disk._streaming.add(self)

    def write(self, data: Any) -> None:
        """
        Queue C{data} (bytes or a memoryview) for the next position.
        """
        if self.error is not None or not len(data):
            return
        self._pending.append(data)
        self._pendingSize += len(data)
        self.queued += len(data)
        self.peakQueued = max(self.peakQueued, self.queued)
        self._disk.queued += len(data)
        self._disk.peakQueued = max(self._disk.peakQueued, self._disk.queued)
        if self._producer is not None and not self._paused:
            if self.queued >= self._highWater:
                self._paused = True
                self._producer.pauseProducing()
            elif self._disk.overBudget():
                self._disk.holdEveryWriter()  # this one included
        self._kick()

    def _holdForBudget(self) -> None:
        if self._producer is None or self._paused:
            return
        self._paused = True
        self._producer.pauseProducing()
        self._disk.waitForBudget(self)
        self._kick()  # what it gathered goes to the disk, or the budget never frees

    def flush(self) -> Deferred[int]:
        """
        @return: a Deferred that fires with L{written} once everything queued
            so far is in the file, or fails with the first write error.
        """
        if not self._inFlight and not self._pending:
            return self._settled()
        if self._flushed is None:
            self._flushed = OneShotResult()
        d = self._flushed.whenFired()
        self._kick()
        return d

    def _settled(self) -> Deferred[int]:
        if self.error is not None:
            return fail(self.error)
        return succeed(self.written)

    def _kick(self) -> None:
        if self._inFlight or not self._pending:
            return
        if (self._pendingSize < self._minBatch and self._producer is not None
                and not self._paused and self._flushed is None and not self._disk._overBudget):
            # A page-cache write of one 64 KiB read ends before the next
            # read arrives, so without gathering every read would cost a
            # thread hand-off (and GIL traffic): wait for a worthwhile batch,
            # unless the stream is paused, ending, or being flushed -- or
            # others wait for the budget to free, which bytes held back here
            # would delay (for as long as a stalled client likes).
            return
        batch, self._pending = self._pending[:_IOV_MAX], self._pending[_IOV_MAX:]
        size = sum(len(b) for b in batch)
        self._pendingSize -= size
        offset = self._next
        self._next += size
        self._inFlight = True
        d = self._disk.run(self._writeBatch, batch, offset)
        d.addCallbacks(self._batchWritten, self._batchFailed, callbackArgs=(size,))

    def _writeBatch(self, batch: List[Any], offset: int) -> Tuple[int, Optional[OSError]]:
        # Runs in the disk pool.  A short write is resumed, never ignored.
        # A write that fails after some bytes of the batch landed (a disk
        # filling up) reports them with the error: they are in the file,
        # and the caller may record them once they are durable, so the
        # digests see exactly them too.
        pwritev = self._disk.pwritev
        remaining = [memoryview(b) for b in batch]
        done = 0
        error: Optional[OSError] = None
        try:
            while remaining:
                n = pwritev(self._fd, remaining, offset)
                if n <= 0:
                    raise OSError("pwritev wrote nothing")
                offset += n
                done += n
                while remaining and n >= len(remaining[0]):
                    n -= len(remaining[0])
                    remaining.pop(0)
                if n:
                    remaining[0] = remaining[0][n:]
        except OSError as e:
            error = e
        if done and self._disk.startWriteback is not None:
            # On its way to the disk now, not all at the fdatasync that
            # makes it count (chunkd/writeback.py).
            self._disk.startWriteback(self._fd, offset - done, done)
        for digest in self._digests:
            left = done
            for b in batch:
                if left <= 0:
                    break
                digest.update(b if len(b) <= left else memoryview(b)[:left])
                left -= len(b)
        return done, error

    def _batchWritten(self, result: Tuple[int, Optional[OSError]], size: int) -> None:
        done, error = result
        self._inFlight = False
        self.written += done
        if error is not None:
            self._failed(error)
            return
        self.queued -= size
        self._disk.queued -= size
        if self.progress is not None:
            self.progress(self.written)
        self._afterBatch()

    def _batchFailed(self, failure: Failure) -> None:
        self._inFlight = False
        assert failure.value is not None
        self._failed(failure.value)

    def _failed(self, error: BaseException) -> None:
        self.error = error
        # Nothing more will be written: forget the queue (the batch that
        # failed is still counted in it).
        self._pending = []
        self._pendingSize = 0
        self._disk.queued -= self.queued
        self.queued = 0
        self._afterBatch()

    def _afterBatch(self) -> None:
        self._mayResume()
        self._kick()
        self._disk.budgetFreed()
        if not self._inFlight and not self._pending and self._flushed is not None:
            flushed, self._flushed = self._flushed, None
            if self.error is not None:
                flushed.fire(Failure(self.error))
            else:
                flushed.fire(self.written)

    def _mayResume(self) -> None:
        """
        Resume the producer once this writer's own queue is down to its
        low-water mark and the disk is back under its budget (else wait
        for the budget to free: L{DiskService.budgetFreed}).
        """
        if not self._paused or self.queued > self._lowWater:
            return
        if self._producer is not None and self._disk.overBudget(resuming=True):
            self._disk.waitForBudget(self)
            return
        self._paused = False
        if self._producer is not None:
            self._producer.resumeProducing()

    def detach(self) -> None:
        """
        Stop steering the producer: the request is over (or its connection
        is gone), and resuming a finished transport would be wrong.
        """
        self._producer = None
        self._paused = False
        self._disk._streamEnded(self)
        self._kick()
