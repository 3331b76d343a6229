"""
The seam between Twisted's HTTP machinery and chunkd: request bodies are
streamed to a sink chosen when the headers end, never buffered.

C{twisted.web.http.Request} collects a body into memory or a temporary file
and only then lets the resource render.  L{StreamingRequest} (the Site's
C{requestFactory}) instead asks the site's route table
(L{chunkd.routes.RouteTable}) for a L{BodySink}
in C{gotLength} -- when every header is known but no body byte has arrived
-- and feeds each piece of body to it as it comes off the socket.  When the
body ends the request renders as usual (Klein routes it), and the route
awaits the sink's L{BodySink.result}.

A body that no protocol claims goes to a L{BoundedBody}: small bodies (a
JSON request) are kept, larger ones are refused with 413, so no body is ever
held whole in memory.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, List, Optional, Protocol, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http_headers import Headers

from chunkd.auth import ANONYMOUS, Principal
from chunkd.errors import TooLarge, UploadError

if TYPE_CHECKING:
    from chunkd.routes import RouteMatch



#: the socket read size until a request's headers say how large its body
#: is: a thousand connections starting uploads at once each bring one such
#: read with their headers, before any write budget can pause them (issue
#: 14, W6), so it is a little more than a request head needs, not
#: Twisted's 64 KiB.
HEAD_READ = 16 * 1024
#: Twisted's own (C{tcp.Connection.bufferSize}), when disk.read_size is 0
_TWISTED_READ = 64 * 1024


def setReadSize(transport: Any, size: int) -> None:
    """
    How much the next socket reads of C{transport} may bring.  (A TLS
    transport has no C{bufferSize}; it keeps its own.)
    """
    if hasattr(transport, "bufferSize"):
        transport.bufferSize = size


class BodySink(Protocol):
    """
    Where one request's body goes.  Exactly one of L{bodyEnded} and
    L{bodyFailed} is called, after any number of L{dataReceived}.
    """

    def dataReceived(self, data: bytes) -> None:
        """A piece of body, in order."""

    def bodyEnded(self, trailers: Headers) -> None:
        """The whole body has arrived; C{trailers} holds any HTTP trailers."""

    def bodyFailed(self, reason: Failure) -> None:
        """The connection was lost before the body ended."""

    def result(self) -> Deferred[Any]:
        """
        What the route awaits: fires once the body has been dealt with
        (written and recorded), or fails with an L{UploadError}.
        """


class DiscardBody:
    """
    Swallows a body whose request is already known to fail (or to need no
    body), so the route can answer once the body is over.
    """

    def __init__(self, error: Optional[UploadError] = None) -> None:
        self.error = error

    def dataReceived(self, data: bytes) -> None:
        pass

    def bodyEnded(self, trailers: Headers) -> None:
        pass

    def bodyFailed(self, reason: Failure) -> None:
        pass

    def result(self) -> Deferred[Any]:
        if self.error is not None:
            return fail(self.error)
        return succeed(None)


class BoundedBody:
    """
    Keeps a small body in memory (a JSON request, a form), and refuses any
    body larger than C{limit} with 413 without keeping more than C{limit}.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: List[bytes] = []
        self._size = 0
        self._tooLarge = False

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.limit:
            self._tooLarge = True
            self._parts = []
        elif not self._tooLarge:
            self._parts.append(data)

    def bodyEnded(self, trailers: Headers) -> None:
        pass

    def bodyFailed(self, reason: Failure) -> None:
        self._parts = []

    def result(self) -> Deferred[Any]:
        if self._tooLarge:
            return fail(TooLarge(f"request body larger than {self.limit} bytes"))
        return succeed(b"".join(self._parts))


class StreamingRequest(server.Request):
    """
    A request whose body is streamed to a L{BodySink} instead of being
    collected in C{content} (which stays empty, so Twisted never parses a
    form in memory).

    @ivar bodySink: the sink chosen when the headers ended.
    @ivar route: the route the request matched (L{chunkd.routes.RouteMatch}),
        or C{None}: known from the end of the headers on.
    @ivar principal: who asks, by their token (L{chunkd.auth.Principal}).
    @ivar refusal: the error the request was refused with when its headers
        ended (a missing or bad token), answered whatever the route.
    @ivar trailers: HTTP trailers of a chunked body, once it ended.
    """

    bodySink: BodySink
    route: Optional["RouteMatch"] = None
    #: who asks (L{chunkd.auth}), known from the end of the headers on
    principal: Principal = ANONYMOUS
    #: why the request was refused at the end of its headers, if it was
    refusal: Optional[UploadError] = None
    #: the path it is routed by, when the route table diverted it
    routedPath: Optional[bytes] = None
    _bodyOpen = False
    #: whether the body is large enough to be read disk.read_size at a time
    _largeBody = False
    # Twisted labels every response text/html; most of ours have no body.
    defaultContentType = None

    def gotLength(self, length: Optional[int]) -> None:
        # Every header is known; the request line is still on the channel.
        self.content = io.BytesIO()
        self.method = self.channel._command
        self.uri = self.channel._path
        # Known now, not only once the body has ended: an interim response
        # sent while the body streams must know it speaks to HTTP/1.1.
        self.clientproto = self.channel._version
        self.path = self.uri.split(b"?", 1)[0]
        self.method = self.effectiveMethod()
        self.bodyLength = length
        self.bodyReceived = 0
        site = self.chunkdSite
        readSize = getattr(site, "readSize", 0) or _TWISTED_READ
        # Fewer, larger reads for a large body (disk.read_size): a quarter
        # of the calls into the HTTP parser and the sink per MiB -- fewer
        # while many bodies stream (ChunkdSite.bodyReadSize, adjusted at
        # each read); a small body in one read.
        self._largeBody = length is None or length > readSize
        setReadSize(self.transport, site.bodyReadSize() if self._largeBody else max(HEAD_READ, length or 0))
        self.trailers = Headers()
        self._decoder = getattr(self.channel, "_transferDecoder", None)
        self.bodySink = site.routes.sinkFor(self)
        self._bodyOpen = True

    @property
    def chunkdSite(self) -> Any:
        """
        The Site that made this request's channel (Twisted sets C{site} on
        the channel without declaring it).
        """
        return getattr(self.channel, "site")

    @property
    def bodyProducer(self) -> Optional[IPushProducer]:
        """
        The transport, as the push producer the disk writer pauses while
        the disk lags (TCP, TLS and UNIX transports all are) -- through the
        channel's own producer when it has one, so the channel knows the
        pauses are chunkd's and not the client's (L{chunkd.guard}).
        """
        producer = getattr(self.channel, "bodyProducer", None)
        if producer is not None:
            return cast(IPushProducer, producer)
        return cast(Optional[IPushProducer], self.transport)

    def effectiveMethod(self) -> bytes:
        """
        The method, after C{X-HTTP-Method-Override} (which tus clients send
        with POST where PATCH or DELETE cannot get through).
        """
        override = self.requestHeaders.getRawHeaders(b"x-http-method-override")
        if override and self.method == b"POST":
            return override[0].strip().upper()
        return self.method.upper()

    def handleContentChunk(self, data: bytes) -> None:
        self.bodyReceived += len(data)
        self.bodySink.dataReceived(data)
        if self._largeBody:
            setReadSize(self.transport, self.chunkdSite.bodyReadSize())

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._bodyOpen = False
        setReadSize(self.transport, HEAD_READ)  # the next request's head
        self.trailers = _trailersOf(self._decoder)
        self._decoder = None
        self.bodySink.bodyEnded(self.trailers)
        super().requestReceived(command, path, version)

    def process(self) -> None:
        # Klein routes on self.method and self.path: apply the override and
        # any diversion (which requestReceived undid) for them too.
        self.method = self.effectiveMethod()
        if self.routedPath is not None:
            self.path = self.routedPath
        super().process()

    def connectionLost(self, reason: Failure) -> None:
        if self._bodyOpen:
            self._bodyOpen = False
            self.bodySink.bodyFailed(reason)
            self.chunkdSite.bodyInterrupted(self)
        super().connectionLost(reason)


def _trailersOf(decoder: Any) -> Headers:
    """
    The trailers Twisted's chunked decoder collected.  Twisted keeps them on
    a private attribute and offers no public way to read them; if a future
    Twisted drops the attribute, trailers read as empty (and chunkd stops
    advertising checksum-trailer, see L{trailersSupported}).
    """
    headers = Headers()
    for line in getattr(decoder, "_trailerHeaders", None) or []:
        name, sep, value = bytes(line).partition(b":")
        if sep:
            headers.addRawHeader(name.strip(), value.strip())
    return headers


def trailersSupported() -> bool:
    """
    Whether this Twisted exposes request trailers (see L{_trailersOf}).
    """
    from twisted.web.http import _ChunkedTransferDecoder

    probe = _ChunkedTransferDecoder(lambda data: None, lambda rest: None)
    return isinstance(getattr(probe, "_trailerHeaders", None), list)

