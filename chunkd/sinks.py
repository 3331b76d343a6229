"""
Body sinks that put bytes into an upload's file.

L{FileSink} is the one every protocol uses for upload bytes: it hands the
body to an L{OffsetWriter} as it arrives, stops at the upload's length, and
when the body ends -- or the connection drops -- waits for the writes and
hands the protocol a L{BodyOutcome} to record.  L{LateSink} covers the gap
while an upload is being created (creation-with-upload): it pauses the
socket until the real sink exists, so at most one read is ever held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from chunkd.disk import OffsetWriter
from chunkd.errors import UploadError
from chunkd.once import OneShotResult
from chunkd.streaming import BodySink, DiscardBody

log = Logger()


@dataclass
class BodyOutcome:
    """
    How a body went: what reached the file, and why it stopped.

    @ivar complete: the whole body arrived (else the connection dropped).
    @ivar written: bytes now in the file, from the writer's start offset.
    @ivar overflow: the body ran past the limit; only the bytes up to the
        limit were written.
    @ivar error: a write error (a full disk, an I/O error), if any.
    """

    complete: bool
    written: int
    overflow: bool
    trailers: Headers
    error: Optional[BaseException] = None


Finisher = Callable[[BodyOutcome], "Deferred[Any]"]


class FileSink:
    """
    Streams a body into a file through an L{OffsetWriter}.

    @param limit: the most bytes this body may bring (the rest of the
        upload), or C{None} for no limit.
    @param finish: called once with the L{BodyOutcome} after every write
        has landed; it records what should be recorded and releases the
        upload.  Its result is this sink's L{result}.
    """

    def __init__(self, writer: OffsetWriter, limit: Optional[int], finish: Finisher) -> None:
        self.writer = writer
        self.limit = limit
        self.received = 0
        self.overflow = False
        self._finish = finish
        self._result: OneShotResult[Any] = OneShotResult()

    def dataReceived(self, data: bytes) -> None:
        if self.limit is not None and self.received + len(data) > self.limit:
            self.overflow = True
            data = memoryview(data)[: self.limit - self.received]  # type: ignore[assignment]
        self.received += len(data)
        self.writer.write(data)

    def bodyEnded(self, trailers: Headers) -> None:
        self._end(True, trailers)

    def bodyFailed(self, reason: Failure) -> None:
        self._end(False, Headers())

    def _end(self, complete: bool, trailers: Headers) -> None:
        self.writer.detach()

        def outcome(written: object) -> BodyOutcome:
            if isinstance(written, Failure):
                return BodyOutcome(
                    complete, self.writer.written, self.overflow, trailers, written.value
                )
            return BodyOutcome(complete, self.writer.written, self.overflow, trailers)

        d: Deferred[Any] = self.writer.flush()
        d.addBoth(outcome)
        d.addCallback(self._finish)
        d.addBoth(self._settle, complete)

    def _settle(self, result: Any, complete: bool) -> None:
        if isinstance(result, Failure) and not complete and not result.check(UploadError):
            log.failure("recording an interrupted upload", result)
        self._result.fire(result)

    def result(self) -> Deferred[Any]:
        return self._result.whenFired()


class RecordSink(DiscardBody):
    """
    For requests whose body carries nothing to store (a creation without
    data): the body is discarded and the result is the value given.
    """

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value

    def result(self) -> "Deferred[Any]":
        return succeed(self.value)


class LateSink:
    """
    A sink that does not exist yet: C{pending} fires with the real one.
    Until then the socket is paused and the little that still arrives is
    held, then replayed into the real sink in order.
    """

    def __init__(self, pending: Deferred[BodySink], producer: Optional[IPushProducer]) -> None:
        self._producer = producer
        self._held: List[bytes] = []
        self._ended: Optional[tuple] = None
        self._sink: Optional[BodySink] = None
        self._error: Optional[Failure] = None
        self._result: OneShotResult[Any] = OneShotResult()
        if producer is not None:
            producer.pauseProducing()
        pending.addCallbacks(self._ready, self._failed)

    def _ready(self, sink: BodySink) -> None:
        self._sink = sink
        held, self._held = self._held, []
        if self._ended is None and self._producer is not None:
            # Resumed before the replay, not after: replaying may pause the
            # socket again (the disk's write budget, the writer's high-water
            # mark), and that pause must stick.  No read can come in between:
            # reads come from the reactor, not from this call.
            self._producer.resumeProducing()
        for data in held:
            sink.dataReceived(data)
        if self._ended is not None:
            kind, arg = self._ended
            getattr(sink, kind)(arg)
        sink.result().addBoth(self._result.fire)

    def _failed(self, failure: Failure) -> None:
        self._error = failure
        self._held = []
        if self._producer is not None and self._ended is None:
            # Drain the body so the error can be answered.
            self._producer.resumeProducing()
        self._result.fire(failure)

    def dataReceived(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink.dataReceived(data)
        elif self._error is None:
            self._held.append(data)

    def bodyEnded(self, trailers: Headers) -> None:
        if self._sink is not None:
            self._sink.bodyEnded(trailers)
        else:
            self._ended = ("bodyEnded", trailers)

    def bodyFailed(self, reason: Failure) -> None:
        self._producer = None
        if self._sink is not None:
            self._sink.bodyFailed(reason)
        else:
            self._ended = ("bodyFailed", reason)

    def result(self) -> Deferred[Any]:
        return self._result.whenFired()


class MappedSink:
    """
    Another sink's body handling, with its result passed through C{f}
    (which may return a Deferred): what a protocol does once a body is
    recorded, such as completing the upload it finished.
    """

    def __init__(self, sink: BodySink, f: Callable[[Any], Any],
                 failed: Optional[Callable[[Failure], Any]] = None) -> None:
        self.sink = sink
        self.f = f
        #: what to do (then pass on) when the body is refused
        self.failed = failed

    def dataReceived(self, data: bytes) -> None:
        self.sink.dataReceived(data)

    def bodyEnded(self, trailers: Headers) -> None:
        self.sink.bodyEnded(trailers)

    def bodyFailed(self, reason: Failure) -> None:
        self.sink.bodyFailed(reason)

    def result(self) -> Deferred[Any]:
        d = self.sink.result().addCallback(self.f)
        if self.failed is not None:
            d.addErrback(self.failed)
        return d
