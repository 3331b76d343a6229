"""
The HTTP face: one Klein app on which every protocol's routes are
declared (L{chunkd.routes}), the one place where L{UploadError}s become
responses, CORS, and the Site that streams bodies (L{StreamingRequest}).
"""

from __future__ import annotations

import json
import re
import weakref
from typing import Any, Callable, List, Optional, Sequence, cast

from klein import Klein
from werkzeug.exceptions import HTTPException
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from twisted.web.resource import Resource
from twisted.web.server import Site

from chunkd.auth import Authenticator
from chunkd.config import Config
from chunkd.errors import BadRequest, Problem, UploadError, diskError, internalError
from chunkd.routes import RouteTable, UploadProtocol
from chunkd.streaming import StreamingRequest

log = Logger()


def header(request: Any, name: str) -> Optional[str]:
    """
    The first value of a request header as text, or C{None}.
    """
    values = request.requestHeaders.getRawHeaders(name.encode("latin-1"))
    if not values:
        return None
    return values[0].decode("latin-1").strip()


def setHeader(request: Any, name: str, value: object) -> None:
    request.responseHeaders.setRawHeaders(name.encode("latin-1"), [str(value).encode("latin-1")])


_FORWARDED_PAIR = re.compile(r'\s*([a-zA-Z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)')
_SAFE_HOST = re.compile(r"^[A-Za-z0-9.\-\[\]:]+\Z")


def baseURL(request: Any, trustProxy: bool) -> str:
    """
    C{scheme://host} as the client sees this server: from C{Host}, or --
    behind a trusted reverse proxy -- from C{Forwarded} (RFC 7239) or
    C{X-Forwarded-Proto}/C{X-Forwarded-Host}.  A host that is not a plain
    host name or address is ignored, so no header can inject a URL.
    """
    scheme = "https" if request.isSecure() else "http"
    host = header(request, "host")
    prefix = ""
    if trustProxy:
        forwarded = header(request, "forwarded")
        if forwarded:
            first = forwarded.split(",", 1)[0]
            pairs = {k.lower(): v.strip('"') for k, v in _FORWARDED_PAIR.findall(first)}
            scheme = pairs.get("proto", scheme)
            host = pairs.get("host", host)
        else:
            proto = header(request, "x-forwarded-proto")
            fhost = header(request, "x-forwarded-host")
            if proto:
                scheme = proto.split(",", 1)[0].strip()
            if fhost:
                host = fhost.split(",", 1)[0].strip()
        fprefix = header(request, "x-forwarded-prefix")
        if fprefix and re.match(r"^/[A-Za-z0-9._~/\-]*$", fprefix):
            prefix = fprefix.rstrip("/")
    if scheme not in ("http", "https"):
        scheme = "http"
    if not host or not _SAFE_HOST.match(host):
        address = request.getHost()
        host = f"{address.host}:{address.port}"
    return f"{scheme}://{host}{prefix}"


_FORWARDED_FOR = re.compile(r'(?i)(?:^|;)\s*for\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)')


def clientAddress(request: Any, trustProxy: bool) -> str:
    """
    The client's address: the peer's, or -- behind a trusted reverse proxy
    -- the one that proxy forwarded.  The I{last} entry of C{Forwarded} /
    C{X-Forwarded-For} is taken: the proxy appends the address it saw
    (nginx's C{$proxy_add_x_forwarded_for}), while everything before it
    came from the client and may be forged.
    """
    if trustProxy:
        forwarded = header(request, "forwarded")
        if forwarded:
            match = _FORWARDED_FOR.search(forwarded.split(",")[-1])
            if match and match.group(1):
                return _bareAddress(match.group(1).strip('"'))
        xff = header(request, "x-forwarded-for")
        if xff and xff.split(",")[-1].strip():
            return _bareAddress(xff.split(",")[-1].strip())
    peer = request.getClientAddress()
    return getattr(peer, "host", None) or "local"


def _bareAddress(value: str) -> str:
    # "[2001:db8::1]:4711" -> "2001:db8::1", "192.0.2.1:4711" -> "192.0.2.1"
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


class Cors:
    """
    Cross-origin access for browser clients: allowed origins come from the
    config; the protocols say which response headers scripts may read.
    """

    allowMethods = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"

    def __init__(self, config: Config, exposedHeaders: List[str]) -> None:
        self.origins = set(config.cors.allowed_origins)
        self.maxAge = int(config.cors.max_age)
        self.exposed = ", ".join(sorted(set(exposedHeaders)))

    def allowedOrigin(self, request: Any) -> Optional[str]:
        origin = header(request, "origin")
        if origin is None or not self.origins:
            return None
        if "*" in self.origins or origin in self.origins:
            return origin
        return None

    def decorate(self, request: Any) -> None:
        """
        Add CORS headers to any response whose origin is allowed; answer
        the preflight's questions on OPTIONS.
        """
        origin = self.allowedOrigin(request)
        if origin is None:
            return
        setHeader(request, "Access-Control-Allow-Origin", origin)
        request.responseHeaders.addRawHeader(b"Vary", b"Origin")
        setHeader(request, "Access-Control-Expose-Headers", self.exposed)
        if request.method == b"OPTIONS":
            setHeader(request, "Access-Control-Allow-Methods", self.allowMethods)
            asked = header(request, "access-control-request-headers")
            if asked and re.match(r"^[A-Za-z0-9\-_, ]*$", asked):
                setHeader(request, "Access-Control-Allow-Headers", asked)
            setHeader(request, "Access-Control-Max-Age", self.maxAge)


def renderError(request: Any, error: UploadError) -> bytes:
    """
    The one place an L{UploadError} becomes a response: its status, its
    headers, and its reason as one line of text.
    """
    request.setResponseCode(error.status)
    for name, value in error.headers.items():
        setHeader(request, name, value)
    setHeader(request, "Cache-Control", "no-store")
    if isinstance(error, Problem):
        setHeader(request, "Content-Type", "application/problem+json")
        body = json.dumps({"type": error.type, **error.members, "detail": error.reason}).encode("utf-8")
    else:
        setHeader(request, "Content-Type", "text/plain; charset=utf-8")
        body = error.reason.encode("utf-8") + b"\n"
    return b"" if request.method == b"HEAD" else body


#: reason phrases Twisted's table lacks
_PHRASES = {431: b"Request Header Fields Too Large"}


def renderRawError(error: UploadError) -> bytes:
    """
    L{renderError} for an answer given before any request object exists
    (a request head over the limits, a connection refused under load, see
    L{chunkd.guard}): the whole response as bytes, in the same format,
    closing the connection.
    """
    body = error.reason.encode("utf-8") + b"\n"
    phrase = _PHRASES.get(error.status) or RESPONSES.get(error.status, b"Error")
    lines = [b"HTTP/1.1 %d %s" % (error.status, phrase)]
    for name, value in error.headers.items():
        lines.append(name.encode("latin-1") + b": " + str(value).encode("latin-1"))
    lines += [
        b"Content-Type: text/plain; charset=utf-8",
        b"Cache-Control: no-store",
        b"Connection: close",
        b"Content-Length: %d" % len(body),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class _Refusal(Resource):
    """
    Answers a request the routes must never see (see
    L{ChunkdSite.getResourceFor}) with its error.
    """

    isLeaf = True

    def __init__(self, error: UploadError) -> None:
        super().__init__()
        self.error = error

    def render(self, request: Any) -> bytes:
        return renderError(request, self.error)


def _undecodable(request: Any) -> Optional[UploadError]:
    """
    Why Klein could not route C{request}: a path (after percent-decoding)
    or a host name that is not UTF-8.  Klein would answer 400 too, but log
    a traceback for it: one per request, which lets any client flood the
    log.
    """
    try:
        b"/".join(request.postpath).decode("utf-8")
    except UnicodeDecodeError:
        return BadRequest("the URL path is not valid UTF-8")
    try:
        request.getRequestHostname().decode("utf-8")
    except UnicodeDecodeError:
        return BadRequest("the Host header is not valid UTF-8")
    return None


#: what one reactor turn should read from streaming bodies at most, when
#: it can (L{ChunkdSite.bodyReadSize}): with 16 uploads streaming, 256 KiB
#: reads made turns of 4 ms at the 90th percentile and HEADs waited 17-27
#: ms at the 99th; 128 KiB reads, 2.4-2.8 ms and 10-11 ms, at the same
#: throughput (bench/README.md, W8)
TURN_BYTES = 2 * 1024 * 1024


class ChunkdSite(Site):
    """
    The Site: streams bodies where C{routes} say, adds CORS headers
    before any route runs, never shows a traceback to a client, logs each
    request as a structured event, and can close down gracefully.
    """

    displayTracebacks = False
    accessLog = Logger(namespace="chunkd.access")

    def __init__(
        self, routes: RouteTable, cors: Cors, timeout: float, metrics: Optional[Any] = None
    ) -> None:
        super().__init__(
            routes.app.resource(),
            requestFactory=StreamingRequest,
            timeout=timeout or None,
            parsePOSTFormSubmission=False,
        )
        self.routes = routes
        self.cors = cors
        self.metrics = metrics
        self.channels: "weakref.WeakSet[Any]" = weakref.WeakSet()
        #: socket read size for large bodies (disk.read_size)
        self.readSize = 0
        #: how many bodies stream to disk now (the disk service's count)
        self.streamingBodies: Callable[[], int] = lambda: 0
        #: log every request (log_level debug); failures are always logged
        self.logEveryRequest = False

    def bodyReadSize(self) -> int:
        """
        How much one socket read of a large body may bring now: the
        configured size (disk.read_size) while few bodies stream, down to
        half of it as more do, so one reactor turn -- a read of every
        streaming body -- stays near L{TURN_BYTES}: a request that is not
        an upload (a HEAD) waits about a turn or two for its answer.
        """
        size = self.readSize or 64 * 1024  # Twisted's own
        streams = self.streamingBodies()
        if streams * size <= TURN_BYTES:
            return size
        return max(size // 2, TURN_BYTES // streams)

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        # Twisted wraps the HTTPChannel in a protocol that could switch to
        # HTTP/2; the channel inside is what knows its requests.
        self.channels.add(getattr(protocol, "_channel", protocol))
        return protocol

    def getResourceFor(self, request: Any) -> Any:
        self.cors.decorate(request)
        refusal = _undecodable(request)
        if refusal is not None:
            return _Refusal(refusal)
        return super().getResourceFor(request)

    def log(self, request: Any) -> None:
        """
        One event per failed request, with named fields -- per request of
        any kind with C{log_level: debug}.  (Building a log event for every
        HEAD costs a quarter of its time; uploads' life cycles are logged
        once each by the store's events instead.)
        """
        received = getattr(request, "bodyReceived", 0)
        if self.metrics is not None:
            self.metrics.requestDone(request)
            self.metrics.bodyReceived(request, received)
        if request.code < 400 and not self.logEveryRequest:
            return
        emit = self.accessLog.info if request.code >= 400 else self.accessLog.debug
        emit(
            "{client} {method} {path} {status} in={received} out={sent}",
            client=request.getClientAddress().host if request.getClientAddress() else "-",
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1") if request.path else "-",
            status=request.code,
            received=received,
            sent=request.sentLength,
        )

    def bodyInterrupted(self, request: Any) -> None:
        """
        A client vanished mid-body: its bytes still count.
        """
        self.accessLog.info(
            "{method} {path} cut off after {received} bytes",
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1"),
            received=request.bodyReceived,
        )
        if self.metrics is not None:
            self.metrics.bodyReceived(request, request.bodyReceived)

    def shutdown(self, reactor: Any, grace: float) -> "Deferred[None]":
        """
        Close idle connections now; give connections with a request in
        progress up to C{grace} seconds to finish, then cut them (what their
        bodies brought is still recorded by their sinks).
        """
        deadline = reactor.seconds() + grace
        done: Deferred[None] = Deferred()

        def open() -> List[Any]:
            # A channel keeps a request whose connection was lost (cut
            # mid-body, refused mid-head) in its list: it is not busy.
            return [c for c in list(self.channels)
                    if c.transport is not None and getattr(c, "connected", True)]

        def busy() -> List[Any]:
            return [c for c in open() if getattr(c, "requests", None)]

        def check() -> None:
            for channel in open():
                if not getattr(channel, "requests", None):
                    channel.transport.loseConnection()
            remaining = busy()
            if not remaining:
                done.callback(None)
            elif reactor.seconds() >= deadline:
                for channel in remaining:
                    channel.transport.abortConnection()
                reactor.callLater(0, done.callback, None)
            else:
                reactor.callLater(0.05, check)

        check()
        return done


def buildRoutes(protocols: Sequence[UploadProtocol],
                authenticator: Optional[Authenticator] = None) -> "tuple[RouteTable, List[str]]":
    """
    One Klein app with every protocol's routes, the error rendering every
    route shares, and the response headers browsers may read.
    """
    app = Klein()
    routes = RouteTable(app, authenticator)
    # A browser client reads why its token was refused.
    exposed: List[str] = ["WWW-Authenticate"]
    for protocol in protocols:
        routes.install(protocol)
        exposed.extend(protocol.exposedHeaders)

    @app.handle_errors(UploadError)
    def uploadError(request: Any, failure: Failure) -> bytes:
        return renderError(request, cast(UploadError, failure.value))

    @app.handle_errors(HTTPException)
    def routingError(request: Any, failure: Failure) -> bytes:
        # No route (404) or not this method (405): werkzeug's verdict, our format.
        error = cast(HTTPException, failure.value)
        status = error.code or 400
        # The CORS preflight route answers OPTIONS on every path: a path that
        # allows nothing else serves nothing, and that is a 404, not a 405.
        if status == 405 and set(getattr(error, "valid_methods", None) or ()) <= {"OPTIONS"}:
            status = 404
        reason = "no such resource" if status == 404 else "method not allowed here"
        return renderError(request, UploadError(reason, status=status))

    @app.handle_errors(OSError)
    def storageError(request: Any, failure: Failure) -> bytes:
        # The storage failed under a route (a shared file system that keeps
        # answering ESTALE, say): one line for the operator, the mapped
        # answer for the client, no traceback.
        log.error("storage error answering {method} {uri}: {error}",
                  method=request.method, uri=request.uri, error=str(failure.value))
        return renderError(request, diskError(cast(OSError, failure.value), "reading the upload"))

    @app.handle_errors(Exception)
    def unexpected(request: Any, failure: Failure) -> bytes:
        log.failure("unexpected error answering {method} {uri}", failure,
                    method=request.method, uri=request.uri)
        return renderError(request, internalError())

    def preflight(request: Any) -> bytes:
        # CORS preflight anywhere; the headers come from Cors.decorate.
        request.setResponseCode(200)
        return b""

    app.route("/", branch=True, methods=["OPTIONS"], endpoint="cors:preflight")(preflight)
    return routes, exposed
