"""
The disk writer on its own: a real L{DiskService} (its thread pool on the
trial reactor) writing real temporary files, with no socket and no HTTP.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from typing import Any, List, Sequence, Tuple

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from chunkd.disk import DiskService, OffsetWriter
from tests.helpers import CountingProducer, TusTestCase, openTempFile, readFile, startedDisk

BIG = 1 << 30  # a high-water mark never reached


class RecordingDigest:
    """A digest stand-in that keeps every update, in order."""

    def __init__(self) -> None:
        self.updates: List[bytes] = []

    def update(self, data: Any) -> None:
        self.updates.append(bytes(data))


class DiskTestCase(unittest.TestCase):
    """
    A temporary file that starts with C{PREFIX}, a started disk service
    whose writes can be watched (C{self.calls}: one C{(offset, size)} a
    C{pwritev} call) and held back (C{self.hold()}, C{self.release()}).
    """

    PREFIX = b"PREFIX----"

    def setUp(self) -> None:
        self.path, self.fd = openTempFile(self, self.PREFIX)
        self.disk: DiskService = startedDisk(self)
        self.calls: List[Tuple[int, int]] = []
        self.gate = threading.Event()
        self.gate.set()
        # Runs before the disk service stops: never leave a worker waiting.
        self.addCleanup(self.gate.set)
        realPwritev = self.disk.pwritev

        def watchedPwritev(fd: int, buffers: Sequence[Any], offset: int) -> int:
            self.gate.wait(30)
            self.calls.append((offset, sum(len(b) for b in buffers)))
            return realPwritev(fd, buffers, offset)

        self.disk.pwritev = watchedPwritev

    def hold(self) -> None:
        """Writes wait in their thread until L{release}."""
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def writer(self, offset: int = len(PREFIX), highWater: int = BIG, lowWater: int = 0,
               producer: Any = None, digests: Sequence[Any] = ()) -> OffsetWriter:
        return self.disk.writer(self.fd, offset, highWater, lowWater, producer, digests)

    def fileData(self) -> bytes:
        return readFile(self.path)


class OrderTests(DiskTestCase):
    @defer.inlineCallbacks
    def test_writesLandAtIncreasingOffsetsInOrder(self) -> Any:
        # More pieces than one pwritev call takes (IOV_MAX), as bytes and
        # as memoryviews, so the stream goes out in several batches.
        pieces = [os.urandom(1 + i % 97) for i in range(2500)]
        data = b"".join(pieces)
        w = self.writer()
        progress: List[int] = []
        w.progress = progress.append
        for i, piece in enumerate(pieces):
            w.write(memoryview(piece) if i % 2 else piece)
        written = yield w.flush()
        self.assertEqual(written, len(data))
        self.assertEqual(w.written, len(data))
        self.assertEqual(self.fileData(), self.PREFIX + data)
        # One batch at a time, each starting where the last one ended.
        self.assertGreaterEqual(len(self.calls), 3)
        position = len(self.PREFIX)
        for offset, size in self.calls:
            self.assertEqual(offset, position)
            position += size
        self.assertEqual(position, len(self.PREFIX) + len(data))
        self.assertEqual(progress, sorted(progress))
        self.assertEqual(progress[-1], len(data))
        self.assertEqual((w.queued, self.disk.queued), (0, 0))
        self.assertGreater(self.disk.peakQueued, 0)

    @defer.inlineCallbacks
    def test_writesAtAnOffsetLeaveTheRestAlone(self) -> Any:
        w = self.writer(offset=3)
        w.write(b"abc")
        w.write(b"")  # nothing to write: ignored
        w.write(b"de")
        written = yield w.flush()
        self.assertEqual(written, 5)
        self.assertEqual(self.fileData(), b"PREabcde--")
        self.assertEqual(w.start, 3)

    @defer.inlineCallbacks
    def test_flushWithNothingQueued(self) -> Any:
        w = self.writer()
        written = yield w.flush()
        self.assertEqual(written, 0)
        self.assertEqual(self.calls, [])
        self.assertEqual(self.fileData(), self.PREFIX)

    @defer.inlineCallbacks
    def test_twoWritersOnOneFile(self) -> Any:
        first, second = os.urandom(5000), os.urandom(7000)
        a = self.writer(offset=len(self.PREFIX))
        b = self.writer(offset=len(self.PREFIX) + len(first))
        for i in range(0, 7000, 1000):
            b.write(second[i:i + 1000])
            a.write(first[i:i + 1000])
        yield defer.gatherResults([a.flush(), b.flush()])
        self.assertEqual(self.fileData(), self.PREFIX + first + second)

    @defer.inlineCallbacks
    def test_digestsSeeTheBytesInOrder(self) -> Any:
        pieces = [os.urandom(1 + (i * 7919) % 5000) for i in range(1600)]
        recorder = RecordingDigest()
        sha = hashlib.sha256()
        w = self.writer(digests=[recorder, sha])
        for piece in pieces:
            w.write(piece)
        yield w.flush()
        # (Not assertEqual: its diff of two long lists takes minutes.)
        self.assertEqual(len(recorder.updates), len(pieces))
        self.assertTrue(recorder.updates == pieces, "the digest saw the pieces out of order")
        self.assertEqual(sha.hexdigest(), hashlib.sha256(b"".join(pieces)).hexdigest())


class ShortWriteTests(DiskTestCase):
    @defer.inlineCallbacks
    def test_shortWritesAreResumed(self) -> Any:
        """
        A C{pwritev} that writes fewer bytes than it was given (at most
        seven, of its first buffer) is called again for the rest.
        """
        watched = self.disk.pwritev
        shortCalls: List[int] = []

        def shortPwritev(fd: int, buffers: Sequence[Any], offset: int) -> int:
            first = memoryview(buffers[0])
            n = min(7, max(1, len(first) - 1))
            shortCalls.append(n)
            return watched(fd, [first[:n]], offset)

        self.disk.pwritev = shortPwritev
        pieces = [b"a" * 10, b"b", b"c" * 25, os.urandom(40)]
        data = b"".join(pieces)
        w = self.writer()
        for piece in pieces:
            w.write(piece)
        written = yield w.flush()
        self.assertEqual(written, len(data))
        self.assertEqual(self.fileData(), self.PREFIX + data)
        self.assertEqual(sum(shortCalls), len(data))
        self.assertGreater(len(shortCalls), len(pieces))

    @defer.inlineCallbacks
    def test_writingNothingIsAnError(self) -> Any:
        self.disk.pwritev = lambda fd, buffers, offset: 0
        w = self.writer()
        w.write(b"abc")
        error = yield self.assertFailure(w.flush(), OSError)
        self.assertIn("wrote nothing", str(error))
        self.assertIs(w.error, error)


class ErrorTests(DiskTestCase):
    def failingDisk(self, code: int = errno.EIO) -> List[int]:
        attempts: List[int] = []

        def failingPwritev(fd: int, buffers: Sequence[Any], offset: int) -> int:
            self.gate.wait(30)
            attempts.append(offset)
            raise OSError(code, os.strerror(code))

        self.disk.pwritev = failingPwritev
        return attempts

    @defer.inlineCallbacks
    def test_errorIsReportedByFlushAndLaterDataDropped(self) -> Any:
        attempts = self.failingDisk(errno.ENOSPC)
        self.hold()
        w = self.writer()
        w.write(b"first")  # in flight, and bound to fail
        w.write(b"second")  # waits behind it
        self.assertEqual(self.disk.queued, len(b"firstsecond"))
        self.release()
        error = yield self.assertFailure(w.flush(), OSError)
        self.assertEqual(error.errno, errno.ENOSPC)
        self.assertIs(w.error, error)
        # What waited was forgotten, not written after the error...
        self.assertEqual(attempts, [len(self.PREFIX)])
        self.assertEqual((w.written, w.queued, self.disk.queued), (0, 0, 0))
        # ...and what comes later is dropped too.
        w.write(b"third")
        self.assertEqual((w.queued, self.disk.queued, self.disk.outstanding), (0, 0, 0))
        again = yield self.assertFailure(w.flush(), OSError)
        self.assertIs(again, error)
        self.assertEqual(attempts, [len(self.PREFIX)])
        self.assertEqual(self.fileData(), self.PREFIX)

    @defer.inlineCallbacks
    def test_bytesThatLandedBeforeTheDiskFilledCount(self) -> Any:
        """
        A disk fills in the middle of a batch: C{pwritev} writes part of it,
        then fails.  The part in the file counts in L{OffsetWriter.written}
        (the caller may record it) and the digests saw exactly that part.
        """
        room = [7]
        real = self.disk.pwritev

        def filling(fd: int, buffers: Sequence[Any], offset: int) -> int:
            if not room[0]:
                raise OSError(errno.ENOSPC, "No space left on device")
            first = memoryview(buffers[0])[: room[0]]
            room[0] -= len(first)
            return real(fd, [first], offset)

        self.disk.pwritev = filling
        digest = hashlib.sha256()
        w = self.writer(digests=[digest])
        w.write(b"abcd")
        w.write(b"efghij")
        error = yield self.assertFailure(w.flush(), OSError)
        self.assertEqual(error.errno, errno.ENOSPC)
        self.assertEqual((w.written, w.queued, self.disk.queued), (7, 0, 0))
        self.assertEqual(self.fileData(), self.PREFIX + b"abcdefg")
        self.assertEqual(digest.hexdigest(), hashlib.sha256(b"abcdefg").hexdigest())

    @defer.inlineCallbacks
    def test_errorResumesAPausedProducer(self) -> Any:
        self.failingDisk()
        self.hold()
        producer = CountingProducer()
        w = self.writer(highWater=10, lowWater=0, producer=producer)
        w.write(b"x" * 10)
        self.assertEqual(producer.pauses, 1)
        self.release()
        yield self.assertFailure(w.flush(), OSError)
        self.assertEqual((producer.pauses, producer.resumes), (1, 1))


class FlowControlTests(DiskTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.producer = CountingProducer()

    @defer.inlineCallbacks
    def test_highWaterPausesAndLowWaterResumes(self) -> Any:
        self.disk.minBatch = 0  # every write goes out as soon as it can
        self.hold()
        w = self.writer(highWater=100, lowWater=20, producer=self.producer)
        seen: List[Tuple[int, int]] = []
        w.progress = lambda written: seen.append((written, self.producer.resumes))
        w.write(b"a" * 50)  # in flight
        w.write(b"b" * 40)
        self.assertEqual(self.producer.pauses, 0)
        w.write(b"c" * 10)  # 100 queued: the high-water mark
        self.assertEqual((self.producer.pauses, self.producer.resumes), (1, 0))
        w.write(b"d" * 10)  # already paused: not paused twice
        self.assertEqual(self.producer.pauses, 1)
        self.assertEqual((w.queued, w.peakQueued), (110, 110))
        self.release()
        written = yield w.flush()
        self.assertEqual(written, 110)
        # After the first batch 60 bytes still waited, above the low-water
        # mark: the producer stayed paused until the second batch landed.
        self.assertEqual(seen, [(50, 0), (110, 0)])
        self.assertEqual((self.producer.pauses, self.producer.resumes), (1, 1))
        self.assertEqual(self.fileData(), self.PREFIX + b"a" * 50 + b"b" * 40 + b"c" * 10 + b"d" * 10)

    @defer.inlineCallbacks
    def test_smallWritesAreGatheredIntoOneBatch(self) -> Any:
        self.disk.minBatch = 1000
        w = self.writer(producer=self.producer)
        for _ in range(9):
            w.write(b"z" * 100)
        self.assertEqual((self.disk.outstanding, self.calls), (0, []))
        w.write(b"z" * 100)  # 1000 bytes: worth a batch
        self.assertEqual(self.disk.outstanding, 1)
        yield w.flush()
        self.assertEqual(self.calls, [(len(self.PREFIX), 1000)])

    def gathering(self) -> OffsetWriter:
        """A writer holding C{abc}, gathered for a batch worth a thread."""
        self.disk.minBatch = 1000
        w = self.writer(producer=self.producer)
        w.write(b"abc")
        self.assertEqual(self.disk.outstanding, 0)
        return w

    @defer.inlineCallbacks
    def test_flushSendsWhatIsGathered(self) -> Any:
        w = self.gathering()
        written = yield w.flush()
        self.assertEqual(written, 3)
        self.assertEqual(self.fileData(), self.PREFIX + b"abc")

    @defer.inlineCallbacks
    def test_detachStopsSteeringTheProducer(self) -> Any:
        self.disk.minBatch = 0
        self.hold()
        w = self.writer(highWater=10, lowWater=5, producer=self.producer)
        w.write(b"x" * 10)
        self.assertEqual(self.producer.pauses, 1)
        w.detach()
        w.write(b"y" * 50)  # far past the high-water mark: nobody to pause
        self.release()
        yield w.flush()
        self.assertEqual((self.producer.pauses, self.producer.resumes), (1, 0))
        self.assertEqual(self.fileData(), self.PREFIX + b"x" * 10 + b"y" * 50)

    @defer.inlineCallbacks
    def test_detachSendsWhatIsGathered(self) -> Any:
        w = self.gathering()
        w.detach()  # the body is over: no more reads will come to gather
        self.assertEqual(self.disk.outstanding, 1)
        yield w.flush()
        self.assertEqual(self.fileData(), self.PREFIX + b"abc")


class BudgetTests(DiskTestCase):
    """
    disk.max_buffered: one budget over every writer, so many uploads on a
    slow disk cannot each hold their own high-water mark of memory.
    """

    def streamingWriters(self, n: int) -> Tuple[List[CountingProducer], List[OffsetWriter]]:
        """C{n} writers, each steering a socket of its own, 10,000 bytes apart in the file."""
        producers = [CountingProducer() for _ in range(n)]
        writers = [self.writer(offset=len(self.PREFIX) + 10_000 * i, highWater=10_000, lowWater=100,
                               producer=p) for i, p in enumerate(producers)]
        return producers, writers

    @defer.inlineCallbacks
    def test_pastTheBudgetEveryWriterPausesThenAllResume(self) -> Any:
        self.disk.minBatch = 0
        self.disk.maxBuffered = 1000
        self.hold()
        producers, writers = self.streamingWriters(3)
        writers[0].write(b"a" * 600)
        writers[1].write(b"b" * 300)
        # Each holds far below its own high-water mark ...
        self.assertEqual([p.pauses for p in producers], [0, 0, 0])
        # ... but together they pass the budget: whoever adds more pauses,
        # even one holding very little.
        writers[2].write(b"c" * 200)
        writers[0].write(b"a" * 10)
        writers[1].write(b"b" * 10)
        self.assertEqual([p.pauses for p in producers], [1, 1, 1])
        self.assertEqual(self.disk.queued, 1120)
        self.release()
        yield defer.gatherResults([w.flush() for w in writers])
        # Written out: under three quarters of the budget, every one resumes.
        self.assertEqual([p.resumes for p in producers], [1, 1, 1])
        self.assertEqual(self.disk.queued, 0)

    @defer.inlineCallbacks
    def test_crossingTheBudgetPausesEveryStreamingWriterAtOnce(self) -> Any:
        """
        The read that crosses the budget pauses every streaming socket
        then, not each at its own next read: a thousand connections would
        otherwise each bring one more read (up to disk.read_size) past it.
        What each writer gathered towards a batch goes to the disk, or the
        budget could never free.
        """
        self.disk.minBatch = 10_000  # each writer would gather, not write
        self.disk.maxBuffered = 1000
        producers, writers = self.streamingWriters(3)
        self.hold()
        writers[0].write(b"a" * 600)
        writers[1].write(b"b" * 300)
        self.assertEqual(([p.pauses for p in producers], self.disk.outstanding), ([0, 0, 0], 0))
        writers[2].write(b"c" * 200)  # 1110 > 1000
        self.assertEqual([p.pauses for p in producers], [1, 1, 1])
        self.assertEqual(self.disk.outstanding, 3)  # each one's gathered batch
        writers[0].write(b"a" * 10)  # a straggler from a read already under way pauses nothing more
        self.assertEqual([p.pauses for p in producers], [1, 1, 1])
        self.release()
        yield defer.gatherResults([w.flush() for w in writers])
        self.assertEqual([p.resumes for p in producers], [1, 1, 1])
        self.assertEqual(self.disk.queued, 0)

    @defer.inlineCallbacks
    def test_noGatheringWhileOthersWaitForTheBudget(self) -> Any:
        """
        A writer that starts while others wait for the budget hands its
        bytes to the disk at once instead of gathering them towards a
        batch: held back, they would keep the budget from freeing for as
        long as its client stalls.
        """
        self.disk.minBatch = 10_000
        self.disk.maxBuffered = 1000
        self.hold()
        held = self.writer(producer=CountingProducer(), highWater=10_000, lowWater=100)
        held.write(b"a" * 1100)  # past the budget: paused, waiting for it to free
        self.assertEqual(self.disk.outstanding, 1)
        late = self.writer(offset=len(self.PREFIX) + 20_000, producer=CountingProducer(),
                           highWater=10_000, lowWater=100)
        self.disk.queued = 800  # as if the disk had caught up to between 3/4 and the budget
        late.write(b"b" * 10)  # below min_batch, and not itself over the budget
        self.assertEqual(self.disk.outstanding, 2)
        self.disk.queued = 1110
        self.release()
        yield defer.gatherResults([held.flush(), late.flush()])

    def test_aDetachedWriterIsNotPausedByTheBudget(self) -> None:
        self.disk.minBatch = 0
        self.disk.maxBuffered = 100
        self.hold()
        done, busy = CountingProducer(), CountingProducer()
        finished = self.writer(producer=done, highWater=10_000, lowWater=10)
        finished.detach()  # its request is over
        self.writer(offset=len(self.PREFIX) + 1000, producer=busy, highWater=10_000, lowWater=10).write(b"x" * 200)
        self.assertEqual((done.pauses, busy.pauses), (0, 1))
        self.release()

    @defer.inlineCallbacks
    def test_noBudgetNoPause(self) -> Any:
        self.disk.minBatch = 0
        self.disk.maxBuffered = 0
        self.hold()
        producer = CountingProducer()
        w = self.writer(highWater=10_000, lowWater=100, producer=producer)
        w.write(b"x" * 5000)
        self.assertEqual(producer.pauses, 0)
        self.release()
        yield w.flush()


class DrainedTests(DiskTestCase):
    @defer.inlineCallbacks
    def test_drainedFiresWhenIdle(self) -> Any:
        self.assertEqual(self.disk.outstanding, 0)
        result = yield self.disk.drained()
        self.assertIsNone(result)

    @defer.inlineCallbacks
    def test_drainedWaitsForEveryJob(self) -> Any:
        self.hold()
        w = self.writer()
        w.write(b"abc")
        done: List[Any] = []
        d = self.disk.drained()
        d.addCallback(done.append)
        other = self.disk.drained()  # a second waiter gets its own
        yield task.deferLater(reactor, 0, lambda: None)
        self.assertEqual((done, self.disk.outstanding), ([], 1))
        self.release()
        yield w.flush()
        yield d
        self.assertEqual(done, [None])
        self.assertIsNone((yield other))
        self.assertEqual(self.disk.outstanding, 0)

    @defer.inlineCallbacks
    def test_drainedWaitsForAJobQueuedByAFinishedOne(self) -> Any:
        order: List[str] = []
        first = self.disk.run(order.append, "first")
        # A callback of the first job queues the next (a flush, then its
        # commit): drained() must wait for that one too.
        first.addCallback(lambda _: self.disk.run(order.append, "second"))
        yield self.disk.drained()
        self.assertEqual(order, ["first", "second"])
        self.assertEqual(self.disk.outstanding, 0)

    @defer.inlineCallbacks
    def test_runReturnsTheResultOnTheReactorThread(self) -> Any:
        workers: List[str] = []

        def job(x: int) -> int:
            workers.append(threading.current_thread().name)
            return x * 2

        result = yield self.disk.run(job, 21)
        self.assertEqual(result, 42)
        self.assertNotEqual(workers, [threading.current_thread().name])
        error = yield self.assertFailure(self.disk.run(os.stat, "/nonexistent/chunkd"), OSError)
        self.assertEqual(error.errno, errno.ENOENT)
        self.assertEqual(self.disk.outstanding, 0)


class BudgetOverRealUploadsTests(TusTestCase):
    """
    Twenty uploads at once over real sockets onto a slow disk, with a
    budget far below their total: sockets pause and resume, nothing is
    refused, every upload byte-exact, and the bytes waiting stay near the
    budget (without it they grow towards all twenty uploads).
    """

    overrides = {"disk.max_buffered": "1MiB", "disk.min_batch": "64KiB", "disk.high_water": "4MiB",
                 "disk.low_water": "256KiB"}

    @defer.inlineCallbacks
    def test_twentyUploadsUnderAOneMiBBudget(self) -> Any:
        real = self.disk.pwritev

        def slowDisk(fd: int, buffers: Sequence[Any], offset: int) -> int:
            time.sleep(0.005)
            return real(fd, buffers, offset)

        self.disk.pwritev = slowDisk
        uploads = []
        for n in range(20):
            data = bytes([n]) * (1024 * 1024 + n)
            uploadId = yield self.createId(len(data))
            uploads.append((uploadId, data))
        responses = yield defer.gatherResults([self.patch(uploadId, 0, data) for uploadId, data in uploads])
        self.assertEqual([r.code for r in responses], [204] * 20)
        for uploadId, data in uploads:
            self.assertEqual(self.dataOf(uploadId), data)
        # At most the budget, plus the one socket read (disk.read_size)
        # that crossed it (every socket is paused then), plus what each
        # request's first read (HEAD_READ, 16 KiB; the bound allows
        # Twisted's own 64 KiB) brought with its headers before its writer
        # existed.
        self.assertLessEqual(self.disk.peakQueued, 1024 * 1024 + self.config.disk.read_size + 20 * 65536)


class NoBudgetOverRealUploadsTests(BudgetOverRealUploadsTests):
    """The same without a budget: the test above is not vacuous."""

    overrides = dict(BudgetOverRealUploadsTests.overrides, **{"disk.max_buffered": 0})

    @defer.inlineCallbacks
    def test_twentyUploadsUnderAOneMiBBudget(self) -> Any:
        with self.assertRaises(self.failureException):
            yield BudgetOverRealUploadsTests.test_twentyUploadsUnderAOneMiBBudget(self)
