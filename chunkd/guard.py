"""
What one client may cost chunkd: every byte of every request comes from
someone who may be hostile, and chunkd must keep answering everyone else.

L{GuardedChannel} is the Site's HTTP/1.1 channel: Twisted's
C{HTTPChannel}, with these policies (the values are C{network:} settings,
read through one L{Guard} per Site, so a reload applies to new requests):

 - B{heads over the limits} (C{max_header_size}, and Twisted's 500 header
   fields): answered 414 (the request line) or 431 with a reason, then
   closed -- Twisted itself drops the connection without a word for an
   overlong line and answers a bare 400 for the rest;
 - B{ambiguous framing} (request smuggling): C{Content-Length} with
   C{Transfer-Encoding}, C{Content-Length} twice, a C{Transfer-Encoding}
   other than C{chunked}: 400 and closed, before any route sees it;
 - B{slow heads} (slowloris): a head not complete C{header_timeout} after
   its first byte gets 408 and is closed.  An idle keep-alive connection
   is not a slow head: it keeps C{idle_timeout};
 - B{slow bodies}: a body averaging under C{min_rate} bytes/s over
   C{min_rate_window} seconds is cut.  Its sink sees a lost connection, the
   path every dropped upload takes: what reached the disk is made durable
   and recorded, and the client can resume from there.  Time during which
   chunkd paused the body itself (its disk lagging, L{MeteredProducer}) is
   not counted against the client;
 - B{slow readers}: a connection whose client takes none of a response for
   C{send_timeout} seconds is aborted (Twisted disables its idle timeout
   while a response is being written, so it would be held forever);
 - B{connection limits}: C{max_connections} in all and
   C{max_connections_per_client} per peer address are enforced when a
   connection is accepted, by closing it before reading a byte.  Answering
   503 would mean reading the request head first (an answer written before
   it makes the client's TCP stack reset the connection and lose it), and
   reading heads is exactly the resource a flood of connections exhausts;
   clients see a refused connection and retry (tus-js-client, Uppy and
   Resumable.js all do).  Behind a trusted proxy (C{trust_proxy}) every
   connection comes from the proxy, whose connections carry many clients'
   requests in turn: there the per-client limit counts requests in progress
   per forwarded address, checked when a head is complete, and answers 503
   with C{Retry-After} -- the proxy hands it to that client alone.

Twisted's C{twisted.protocols.policies} wrappers (C{TimeoutMixin} aside,
which C{HTTPChannel} already uses for the idle timeout) do not fit: they
measure bytes, not HTTP heads and bodies; they cannot see a forwarded
address; and a C{ProtocolWrapper} between the socket and the channel
hides the transport (L{StreamingRequest} sets the socket's read size on
it) and adds a call to every read.  Nothing here blocks: each policy is a
counter and at most one timer per connection, armed only while a head is
incomplete, a body is open or a write is stalled.

Events are logged by L{GuardLog}: the first of each kind at once, then at
most one line per kind every ten seconds with a count, so an attack cannot
flood the journal.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from zope.interface import implementer

from chunkd.config import NetworkConfig
from chunkd.errors import (
    BadRequest,
    HeadersTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    UploadError,
    URITooLong,
)
from chunkd.streaming import HEAD_READ, setReadSize
from chunkd.web import clientAddress, renderRawError

#: what Retry-After says to a client over its limit (seconds)
RETRY_AFTER = 5
#: header fields per request at most (Twisted's own limit, answered 431 here)
MAX_HEADER_FIELDS = 500


class GuardLog:
    """
    Rate-limited log lines for guard events: the first event of a kind is
    logged at once, later ones are counted and summed up at most once per
    C{interval} seconds.
    """

    log = Logger(namespace="chunkd.guard")

    def __init__(self, clock: Any, interval: float = 10.0) -> None:
        self.clock = clock
        self.interval = interval
        self._last: Dict[str, float] = {}
        self._unlogged: Dict[str, int] = {}

    def event(self, kind: str, client: str) -> None:
        now = self.clock.seconds()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            return
        more = self._unlogged.pop(kind, 0)
        self._last[kind] = now
        self.log.info("{kind} ({client}{more})", kind=kind, client=client,
                      more=f"; {more} more since the last such line" if more else "")


class Guard:
    """
    The policy every connection of one Site shares: the C{network:}
    settings (replaced on reload) and the connection counts.

    @ivar connections: connections open now (admitted ones).
    @ivar perClient: open connections per peer address -- or, under
        C{trust_proxy}, requests in progress per forwarded address.
    """

    def __init__(self, network: NetworkConfig, reactor: Any) -> None:
        self.network = network
        self.reactor = reactor
        self.connections = 0
        self.perClient: Dict[str, int] = {}
        self.log = GuardLog(reactor)

    def reconfigure(self, network: NetworkConfig) -> None:
        self.network = network

    def channel(self) -> "GuardedChannel":
        """A new connection's channel (the Site's C{protocol})."""
        return GuardedChannel(self)

    def admitConnection(self, peer: str) -> Optional[str]:
        """
        Count a new connection from C{peer}, or say why it is refused.
        Returns the key it is counted under per client (C{""}: none).
        """
        net = self.network
        if net.max_connections and self.connections >= net.max_connections:
            self.log.event("connection refused: network.max_connections reached", peer)
            return None
        key = ""
        if not net.trust_proxy and net.max_connections_per_client:
            if self.perClient.get(peer, 0) >= net.max_connections_per_client:
                self.log.event("connection refused: network.max_connections_per_client reached", peer)
                return None
            key = peer
        self.connections += 1
        if key:
            self.perClient[key] = self.perClient.get(key, 0) + 1
        return key

    def admitRequest(self, client: str) -> bool:
        """
        Under C{trust_proxy}: count a request in progress for the forwarded
        C{client}, or refuse it (C{False}).
        """
        limit = self.network.max_connections_per_client
        if limit and self.perClient.get(client, 0) >= limit:
            self.log.event("request refused: network.max_connections_per_client reached", client)
            return False
        self.perClient[client] = self.perClient.get(client, 0) + 1
        return True

    def release(self, key: str) -> None:
        """One connection or request counted under C{key} is over."""
        left = self.perClient.get(key, 0) - 1
        if left > 0:
            self.perClient[key] = left
        else:
            self.perClient.pop(key, None)


class BodyMeter:
    """
    Whether a body keeps up with C{rate} bytes/s: every time the client
    has been free to send for C{window} seconds (time its producer was
    paused by chunkd does not count), what it sent in that time is judged.
    """

    def __init__(self, clock: Any, rate: int, window: float, tooSlow: Callable[[int, float], None]) -> None:
        self.clock = clock
        self.rate = rate
        self.window = window
        self.tooSlow = tooSlow
        self.received = 0
        self._active = 0.0
        self._since: Optional[float] = clock.seconds()
        self._call: Optional[IDelayedCall] = clock.callLater(window, self._judge)

    def paused(self) -> None:
        if self._since is not None:
            self._active += self.clock.seconds() - self._since
            self._since = None

    def resumed(self) -> None:
        if self._since is None:
            self._since = self.clock.seconds()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _judge(self) -> None:
        now = self.clock.seconds()
        active = self._active + (now - self._since if self._since is not None else 0.0)
        if active < self.window * 0.999:
            # Paused for part of the window: wait for the rest of it.
            self._call = self.clock.callLater(self.window - active, self._judge)
            return
        if self.received < self.rate * active:
            self._call = None
            self.tooSlow(self.received, active)
            return
        self.received = 0
        self._active = 0.0
        if self._since is not None:
            self._since = now
        self._call = self.clock.callLater(self.window, self._judge)


@implementer(IPushProducer)
class MeteredProducer:
    """
    The request body's producer as the upload layer sees it
    (L{chunkd.streaming.StreamingRequest.bodyProducer}): the connection's
    transport, with each pause and resume also told to the body's meter,
    so time chunkd holds the client back is not counted as the client's.
    """

    def __init__(self, channel: "GuardedChannel") -> None:
        self.channel = channel

    def pauseProducing(self) -> None:
        if self.channel.meter is not None:
            self.channel.meter.paused()
        self.channel.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        if self.channel.meter is not None:
            self.channel.meter.resumed()
        self.channel.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self.channel.transport.stopProducing()  # type: ignore[union-attr]


class GuardedChannel(HTTPChannel):
    """
    Twisted's HTTP/1.1 channel under L{Guard}'s policies (see the module
    docstring).  Every refusal is a whole response rendered by
    L{renderRawError}, then the connection closes (aborted if the client
    does not take the answer within C{abortTimeout}).

    @ivar meter: the open body's L{BodyMeter}, or C{None}.
    """

    maxHeaders = MAX_HEADER_FIELDS
    meter: Optional[BodyMeter] = None

    def __init__(self, guard: Guard) -> None:
        super().__init__()
        self.guard = guard
        self.MAX_LENGTH = self.totalHeadersSize = guard.network.max_header_size
        self.bodyProducer = MeteredProducer(self)
        self.peer = "-"
        self._counted: Optional[str] = None  # per-client key of this connection
        self._requestClient: Optional[str] = None  # per-client key of the request (trust_proxy)
        self._refused = False
        self._headLines = 0
        self._headStarted: Optional[float] = None
        self._headDeadline: Optional[IDelayedCall] = None
        self._sendDeadline: Optional[IDelayedCall] = None
        self._framing: Dict[bytes, bytes] = {}
        self._malformed = "malformed request line"

    # -- connection limits ---------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.peer = getattr(peer, "host", None) or "local"
        key = self.guard.admitConnection(self.peer)
        if key is None:
            self._refused = True
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._counted = key
        setReadSize(self.transport, HEAD_READ)
        super().connectionMade()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.connected = 0
        self._stopClocks()
        self._releaseRequest()
        if self._counted is not None:
            self.guard.connections -= 1
            if self._counted:
                self.guard.release(self._counted)
            self._counted = None
        super().connectionLost(reason)

    def _releaseRequest(self) -> None:
        if self._requestClient is not None:
            self.guard.release(self._requestClient)
            self._requestClient = None

    # -- heads ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        inHead = self.line_mode and not self._handlingRequest
        if inHead and self._headStarted is None:
            self._headStarted = self.guard.reactor.seconds()
        super().dataReceived(data)
        # Only a head still incomplete after this read needs a timer (most
        # heads arrive in one read and never cost one).
        if (inHead and not self._refused and self._headDeadline is None
                and self._headStarted is not None and self.line_mode and not self._handlingRequest):
            timeout = self.guard.network.header_timeout
            if timeout:
                left = timeout - (self.guard.reactor.seconds() - self._headStarted)
                self._headDeadline = self.guard.reactor.callLater(max(left, 0), self._headTooSlow)

    def _headTooSlow(self) -> None:
        self._headDeadline = None
        timeout = self.guard.network.header_timeout
        self.refuse(RequestTimeout(f"the request head was not complete within {timeout:g}s"),
                    "request head too slow (network.header_timeout)")

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if not line and self._headLines == 0:
            # The empty line some clients send after a body: Twisted eats one.
            super().lineReceived(line)
            return
        first = self._headLines == 0
        self._headLines += 1
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._overLimit(first)
            return
        self._malformed = "malformed request line" if first else "malformed header field"
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._overLimit(self._headLines == 0)

    def _overLimit(self, requestLine: bool) -> None:
        limit = self.totalHeadersSize
        if requestLine:
            self.refuse(URITooLong(f"the request line is longer than {limit} bytes"),
                        "request line too long (network.max_header_size)")
        else:
            self.refuse(HeadersTooLarge(f"the request head is longer than {limit} bytes"),
                        "request head too large (network.max_header_size)")

    def headerReceived(self, line: bytes) -> bool:
        if self._refused:
            return False
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name in (b"content-length", b"transfer-encoding"):
            problem = self._framingProblem(name, value.strip(b" \t"))
            if problem is not None:
                self.refuse(BadRequest(problem), "ambiguous request framing")
                return False
        if self._receivedHeaderCount >= self.maxHeaders:
            self.refuse(HeadersTooLarge(f"more than {self.maxHeaders} header fields"),
                        "too many header fields")
            return False
        return bool(super().headerReceived(line))

    def _framingProblem(self, name: bytes, value: bytes) -> Optional[str]:
        """
        Why this framing header makes the body's length ambiguous (a request
        smuggling vector: a proxy in front may read it differently), or
        C{None}.  RFC 9112 6.1 and 6.3: reject, and close.
        """
        seen = self._framing
        if name in seen:
            if name == b"content-length" and seen[name] != value:
                return "two different Content-Length values"
            return f"{name.decode().title()} given more than once"
        other = b"transfer-encoding" if name == b"content-length" else b"content-length"
        if other in seen:
            return "Content-Length together with Transfer-Encoding"
        if name == b"content-length" and not value.isdigit():
            return "Content-Length is not a number"
        if name == b"transfer-encoding" and value.lower() != b"chunked":
            return "Transfer-Encoding other than chunked"
        seen[name] = value
        return None

    def allHeadersReceived(self) -> None:
        self._cancelHeadClock()
        self._headLines = 0
        self._framing = {}
        net = self.guard.network
        if net.trust_proxy:
            client = clientAddress(self.requests[-1], True)
            if not self.guard.admitRequest(client):
                self.refuse(ServiceUnavailable("too many requests in progress from this client",
                                               headers={"Retry-After": str(RETRY_AFTER)}),
                            None)
                return
            self._requestClient = client
        self._malformed = "malformed chunked body"
        super().allHeadersReceived()
        if not self._refused and self.length != 0 and net.min_rate:
            self.meter = BodyMeter(self.guard.reactor, net.min_rate, net.min_rate_window,
                                   self._bodyTooSlow)

    # -- bodies --------------------------------------------------------------

    def rawDataReceived(self, data: bytes) -> None:
        if self.meter is not None and not self._handlingRequest:
            self.meter.received += len(data)
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self._refused:
            return
        self._stopMeter()
        super().allContentReceived()

    def _bodyTooSlow(self, received: int, seconds: float) -> None:
        self.meter = None
        rate = self.guard.network.min_rate
        self.refuse(RequestTimeout(f"the request body came slower than {rate} bytes/s "
                                   f"({received} bytes in {seconds:.0f}s)"),
                    "request body too slow (network.min_rate)")

    def _stopMeter(self) -> None:
        if self.meter is not None:
            self.meter.stop()
            self.meter = None

    # -- responses -----------------------------------------------------------

    def requestDone(self, request: Any) -> None:
        self._releaseRequest()
        super().requestDone(request)

    def pauseProducing(self) -> None:
        # The transport's write buffer is full: the client is not reading.
        super().pauseProducing()
        timeout = self.guard.network.send_timeout
        if timeout and self._sendDeadline is None and not self._refused:
            self._sendDeadline = self.guard.reactor.callLater(timeout, self._sendStalled)

    def resumeProducing(self) -> None:
        self._cancelSendClock()
        super().resumeProducing()

    def _sendStalled(self) -> None:
        self._sendDeadline = None
        self.guard.log.event("client not reading its response, cut (network.send_timeout)", self.peer)
        self.transport.abortConnection()  # type: ignore[union-attr]

    # -- refusing ------------------------------------------------------------

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's bare "400 Bad Request" for what it finds malformed.
        self.refuse(BadRequest(self._malformed), "malformed request")

    def refuse(self, error: UploadError, kind: Optional[str]) -> None:
        """
        Answer C{error} and close; nothing more from this connection is
        read or parsed.  A request whose body was open sees its connection
        lost once the answer is out (its sink records what it brought).
        """
        if self._refused:
            return
        self._refused = True
        self._stopClocks()
        if kind is not None:
            self.guard.log.event(f"{kind}: {error.status} {error.reason}", self.peer)
        self.transport.write(renderRawError(error))  # type: ignore[union-attr]
        self.loseConnection()
        if self.abortTimeout is not None and self._abortingCall is None:
            self._abortingCall = self.guard.reactor.callLater(self.abortTimeout, self.forceAbortClient)

    def _cancelHeadClock(self) -> None:
        self._headStarted = None
        if self._headDeadline is not None:
            if self._headDeadline.active():
                self._headDeadline.cancel()
            self._headDeadline = None

    def _cancelSendClock(self) -> None:
        if self._sendDeadline is not None:
            if self._sendDeadline.active():
                self._sendDeadline.cancel()
            self._sendDeadline = None

    def _stopClocks(self) -> None:
        self._cancelHeadClock()
        self._cancelSendClock()
        self._stopMeter()
