"""
The body sinks on their own: L{FileSink} over a real disk writer and a real
temporary file, L{LateSink} and L{RecordSink} with in-memory stand-ins.  No
socket, no HTTP.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from typing import Any, List, Optional, Sequence

from twisted.internet import defer, threads
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from chunkd.errors import BadRequest, Conflict
from chunkd.sinks import BodyOutcome, FileSink, LateSink, RecordSink
from tests.helpers import (
    CountingProducer,
    RecordingSink,
    TusTestCase,
    deferLater,
    openTempFile,
    readFile,
    readResponse,
    startedDisk,
)

MiB = 1024 * 1024


class FileSinkTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path, self.fd = openTempFile(self)
        self.disk = startedDisk(self)
        self.outcomes: List[BodyOutcome] = []
        self.answer: Any = "recorded"

    def finish(self, outcome: BodyOutcome) -> "defer.Deferred[Any]":
        self.outcomes.append(outcome)
        if isinstance(self.answer, BaseException):
            return defer.fail(self.answer)
        return defer.succeed(self.answer)

    def sink(self, limit: Optional[int], producer: Any = None, offset: int = 0) -> FileSink:
        writer = self.disk.writer(self.fd, offset, 1 << 30, 0, producer)
        return FileSink(writer, limit, self.finish)

    @defer.inlineCallbacks
    def test_completeBody(self) -> Any:
        s = self.sink(10)
        s.dataReceived(b"01234")
        s.dataReceived(b"56789")
        trailers = Headers({b"upload-checksum": [b"sha1 abc="]})
        s.bodyEnded(trailers)
        result = yield s.result()
        self.assertEqual(result, "recorded")
        [outcome] = self.outcomes
        self.assertEqual((outcome.complete, outcome.written, outcome.overflow, outcome.error),
                         (True, 10, False, None))
        self.assertIs(outcome.trailers, trailers)
        self.assertEqual(readFile(self.path), b"0123456789")
        self.assertEqual((s.received, s.overflow), (10, False))

    @defer.inlineCallbacks
    def test_bodyPastTheLimitIsCutAtTheLimit(self) -> Any:
        s = self.sink(10)
        s.dataReceived(b"0123456")
        s.dataReceived(b"789abc")
        self.assertEqual((s.received, s.overflow), (10, True))
        s.dataReceived(b"def")  # nothing more goes in
        self.assertEqual(s.received, 10)
        s.bodyEnded(Headers())
        yield s.result()
        [outcome] = self.outcomes
        self.assertEqual((outcome.complete, outcome.written, outcome.overflow), (True, 10, True))
        self.assertEqual(readFile(self.path), b"0123456789")

    @defer.inlineCallbacks
    def test_noLimit(self) -> Any:
        data = os.urandom(300000)
        s = self.sink(None, offset=0)
        for i in range(0, len(data), 65536):
            s.dataReceived(data[i:i + 65536])
        s.bodyEnded(Headers())
        yield s.result()
        [outcome] = self.outcomes
        self.assertEqual((outcome.written, outcome.overflow), (len(data), False))
        self.assertEqual(readFile(self.path), data)

    @defer.inlineCallbacks
    def test_cutOffBodyKeepsWhatArrived(self) -> Any:
        s = self.sink(100)
        s.dataReceived(b"abc")
        s.bodyFailed(Failure(ConnectionLost()))
        result = yield s.result()
        self.assertEqual(result, "recorded")
        [outcome] = self.outcomes
        self.assertEqual((outcome.complete, outcome.written, outcome.overflow, outcome.error),
                         (False, 3, False, None))
        self.assertEqual(list(outcome.trailers.getAllRawHeaders()), [])
        self.assertEqual(readFile(self.path), b"abc")

    @defer.inlineCallbacks
    def test_writeErrorIsInTheOutcome(self) -> Any:
        def full(fd: int, buffers: Sequence[Any], offset: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.disk.pwritev = full
        s = self.sink(10)
        s.dataReceived(b"abc")
        s.bodyEnded(Headers())
        yield s.result()
        [outcome] = self.outcomes
        self.assertEqual((outcome.complete, outcome.written), (True, 0))
        self.assertIsInstance(outcome.error, OSError)
        self.assertEqual(outcome.error.errno, errno.ENOSPC)
        self.assertEqual(readFile(self.path), b"")

    @defer.inlineCallbacks
    def test_resultGivenToEveryWaiter(self) -> Any:
        s = self.sink(10)
        early = [s.result(), s.result()]
        # One waiter's callbacks never change what another gets.
        early[0].addCallback(lambda value: "changed by the first waiter")
        s.dataReceived(b"abc")
        s.bodyEnded(Headers())
        second = yield early[1]
        late = yield s.result()
        first = yield early[0]
        self.assertEqual((first, second, late), ("changed by the first waiter", "recorded", "recorded"))
        self.assertEqual(len(self.outcomes), 1)

    @defer.inlineCallbacks
    def test_failureGivenToEveryWaiter(self) -> Any:
        self.answer = Conflict("someone else finished it")
        s = self.sink(10)
        early = s.result()
        s.dataReceived(b"abc")
        s.bodyEnded(Headers())
        for d in (early, s.result(), s.result()):
            error = yield self.assertFailure(d, Conflict)
            self.assertIs(error, self.answer)

    @defer.inlineCallbacks
    def test_failingToRecordAnInterruptedBodyIsLogged(self) -> Any:
        self.answer = ValueError("the record could not be written")
        s = self.sink(10)
        s.dataReceived(b"abc")
        s.bodyFailed(Failure(ConnectionLost()))
        yield self.assertFailure(s.result(), ValueError)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @defer.inlineCallbacks
    def test_uploadErrorOfAnInterruptedBodyIsNotLogged(self) -> Any:
        self.answer = BadRequest("refused")
        s = self.sink(10)
        s.bodyFailed(Failure(ConnectionLost()))
        yield self.assertFailure(s.result(), BadRequest)
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_endedBodyNoLongerSteersTheProducer(self) -> Any:
        producer = CountingProducer()
        writer = self.disk.writer(self.fd, 0, 5, 0, producer)
        s = FileSink(writer, None, self.finish)
        s.dataReceived(b"x" * 10)  # past the high-water mark
        self.assertEqual(producer.pauses, 1)
        s.bodyEnded(Headers())
        yield s.result()
        # The request is over: its transport is not resumed.
        self.assertEqual(producer.resumes, 0)
        self.assertEqual(readFile(self.path), b"x" * 10)


class LateSinkTests(unittest.TestCase):
    def setUp(self) -> None:
        self.pending: defer.Deferred[Any] = defer.Deferred()
        self.producer = CountingProducer()
        self.late = LateSink(self.pending, self.producer)

    def test_pausesTheSocketAtOnce(self) -> None:
        self.assertEqual((self.producer.pauses, self.producer.resumes), (1, 0))

    @defer.inlineCallbacks
    def test_holdsDataThenReplaysItInOrder(self) -> Any:
        for piece in (b"a", b"bc", b"d"):
            self.late.dataReceived(piece)
        real = RecordingSink("stored")
        self.pending.callback(real)
        self.assertEqual(real.pieces, [b"a", b"bc", b"d"])
        self.assertIsNone(real.ended)
        self.assertEqual((self.producer.pauses, self.producer.resumes), (1, 1))
        # From now on data goes straight through.
        self.late.dataReceived(b"e")
        trailers = Headers({b"x": [b"y"]})
        self.late.bodyEnded(trailers)
        self.assertEqual(real.events, [("data", b"a"), ("data", b"bc"), ("data", b"d"), ("data", b"e"),
                                       ("bodyEnded", trailers)])
        result = yield self.late.result()
        self.assertEqual(result, "stored")

    def test_aPauseDuringTheReplaySticks(self) -> None:
        """
        Replaying what was held may pause the socket again (the write
        budget, the writer's high-water mark): the socket must stay paused,
        not be resumed after the replay.
        """
        producer = self.producer

        class PausingSink(RecordingSink):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                producer.pauseProducing()

        self.late.dataReceived(b"held")
        real = PausingSink("stored")
        self.pending.callback(real)
        self.assertEqual(real.pieces, [b"held"])
        self.assertTrue(producer.paused)

    @defer.inlineCallbacks
    def test_bodyEndedBeforeTheSinkExists(self) -> Any:
        self.late.dataReceived(b"all")
        trailers = Headers()
        self.late.bodyEnded(trailers)
        early = self.late.result()
        real = RecordingSink("stored")
        self.pending.callback(real)
        self.assertEqual(real.events, [("data", b"all"), ("bodyEnded", trailers)])
        # The body is over: nothing to resume.
        self.assertEqual(self.producer.resumes, 0)
        self.assertEqual((yield early), "stored")
        self.assertEqual((yield self.late.result()), "stored")

    def test_bodyFailedBeforeTheSinkExists(self) -> None:
        self.late.dataReceived(b"part")
        reason = Failure(ConnectionLost())
        self.late.bodyFailed(reason)
        real = RecordingSink("stored")
        self.pending.callback(real)
        self.assertEqual(real.events, [("data", b"part"), ("bodyFailed", reason)])
        self.assertEqual(self.producer.resumes, 0)

    def test_bodyFailedAfterTheSinkExists(self) -> None:
        real = RecordingSink()
        self.pending.callback(real)
        reason = Failure(ConnectionLost())
        self.late.bodyFailed(reason)
        self.assertEqual(real.ended, ("bodyFailed", reason))

    @defer.inlineCallbacks
    def test_sinkFailureIsTheResult(self) -> Any:
        error = Conflict("not now")
        real = RecordingSink(Failure(error))
        self.pending.callback(real)
        self.late.bodyEnded(Headers())
        failed = yield self.assertFailure(self.late.result(), Conflict)
        self.assertIs(failed, error)

    @defer.inlineCallbacks
    def test_noSinkDrainsTheBodyAndFails(self) -> Any:
        self.late.dataReceived(b"held")
        early = self.late.result()
        error = BadRequest("no such upload")
        self.pending.errback(error)
        # The body is drained so the error can be answered...
        self.assertEqual((self.producer.pauses, self.producer.resumes), (1, 1))
        # ...and what still arrives is dropped, as is its end.
        self.late.dataReceived(b"more")
        self.late.bodyEnded(Headers())
        for d in (early, self.late.result()):
            failed = yield self.assertFailure(d, BadRequest)
            self.assertIs(failed, error)

    @defer.inlineCallbacks
    def test_noSinkAfterTheBodyEndedDoesNotResume(self) -> Any:
        self.late.bodyEnded(Headers())
        self.pending.errback(BadRequest("no such upload"))
        self.assertEqual(self.producer.resumes, 0)
        yield self.assertFailure(self.late.result(), BadRequest)

    @defer.inlineCallbacks
    def test_withoutAProducer(self) -> Any:
        pending: defer.Deferred[Any] = defer.Deferred()
        late = LateSink(pending, None)
        late.dataReceived(b"x")
        real = RecordingSink("ok")
        pending.callback(real)
        late.bodyEnded(Headers())
        self.assertEqual(real.data, b"x")
        self.assertEqual((yield late.result()), "ok")


class RecordSinkTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_discardsTheBodyAndAnswersTheValue(self) -> Any:
        value = object()
        sink = RecordSink(value)
        sink.dataReceived(b"ignored")
        sink.bodyEnded(Headers())
        self.assertIs((yield sink.result()), value)
        self.assertIs((yield sink.result()), value)

    @defer.inlineCallbacks
    def test_aFailedBodyChangesNothing(self) -> Any:
        sink = RecordSink("record")
        sink.dataReceived(b"part")
        sink.bodyFailed(Failure(ConnectionLost()))
        self.assertEqual((yield sink.result()), "record")


class LateSinkUnderTheBudgetTests(TusTestCase):
    """
    A creation-with-upload (a LateSink: its upload is made in the disk
    pool first) over a real socket while the disk is stalled and the write
    budget already full: its body stays paused, it does not pile up in
    memory.
    """

    overrides = {"disk.max_buffered": "1MiB", "disk.min_batch": "64KiB", "disk.high_water": "4MiB",
                 "disk.low_water": "256KiB"}

    @defer.inlineCallbacks
    def test_aCreationWithUploadStaysUnderTheBudget(self) -> Any:
        gate = threading.Event()
        self.addCleanup(gate.set)
        real = self.disk.pwritev

        def stalled(fd: int, buffers: Sequence[Any], offset: int) -> int:
            gate.wait(30)
            return real(fd, buffers, offset)

        first = yield self.createId(2 * MiB)
        self.disk.pwritev = stalled
        filling = self.patch(first, 0, b"a" * (2 * MiB))  # fills the budget, then waits for the disk
        for _ in range(200):
            if self.disk.queued > MiB:
                break
            yield deferLater(0.01)
        self.assertGreater(self.disk.queued, MiB)
        length = 32 * MiB
        head = (b"POST /files/ HTTP/1.1\r\nHost: h\r\nTus-Resumable: 1.0.0\r\nUpload-Length: %d\r\n"
                b"Content-Type: application/offset+octet-stream\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % (length, length))
        sock = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        self.addCleanup(sock.close)
        sock.settimeout(10)

        def send() -> None:
            try:
                sock.sendall(head + b"b" * length)
            except OSError:
                pass  # the socket stayed paused: the kernel's buffers filled

        sending = threads.deferToThread(send)
        yield deferLater(2)
        # the budget, the read that crossed it, and a request's first read
        self.assertLessEqual(self.disk.queued, MiB + self.config.disk.read_size + 64 * 1024)
        gate.set()
        yield sending
        answer = yield threads.deferToThread(readResponse, sock)
        self.assertTrue(answer.startswith(b"HTTP/1.1 201"), answer[:100])
        response = yield filling
        self.assertEqual(response.code, 204)
        sock.close()
        yield deferLater(0.1)  # the server sees the close
