"""
One route declaration per endpoint, used twice: when the headers end, to
choose where the body goes, and when the body has ended, to render the
answer.

A protocol lists its endpoints as L{Route}s.  L{RouteTable} registers each
on the one Klein app (under an endpoint name made from the protocol, the
methods and the path, so no two can clash) and keeps the route's body
factory under the same name.  At the end of the headers it matches the
request against Klein's own C{url_map} -- the very rules Klein will render
with -- so a body's sink and the route that answers can never disagree.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple
from urllib.parse import unquote

from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from chunkd.auth import ANONYMOUS, Authenticator, Principal, invalidToken
from chunkd.config import Config
from chunkd.errors import UploadError, diskError, internalError
from chunkd.streaming import BodySink, BoundedBody, DiscardBody

log = Logger()

#: a route's body factory: the request and the path's arguments -> a sink,
#: or C{None} to leave a small body to the default bounded sink.
BodyFactory = Callable[..., Optional[BodySink]]


@dataclass(frozen=True)
class Route:
    """
    One endpoint: a Klein path pattern, its methods, the handler that
    answers, and -- for requests whose body carries upload bytes -- the
    factory that decides, when the headers end, where the body goes.

    @ivar label: the protocol label metrics use (default: the protocol's).
    @ivar public: served without a token even with C{auth.required}
        (C{/health}; the metrics check their own token).
    @ivar anyProtocol: the route answers about uploads of several
        protocols (the upload page's JSON): a token's list of protocols is
        checked by the route against each upload's own protocol, not
        against the route's label.
    """

    path: str
    methods: Tuple[str, ...]
    render: Callable[..., Any]
    body: Optional[BodyFactory] = None
    label: Optional[str] = None
    public: bool = False
    anyProtocol: bool = False


@dataclass(frozen=True)
class RouteMatch:
    """
    The route a request matched, kept on the request (typed state, set
    when its headers end).
    """

    protocol: str
    endpoint: str
    args: Dict[str, Any] = field(default_factory=dict)
    public: bool = True
    anyProtocol: bool = False


def _refusing(render: Callable[..., Any]) -> Callable[..., Any]:
    """
    C{render}, unless the request was refused when its headers ended (no
    or a bad token): then the refusal is the answer, whatever the route.
    """

    @functools.wraps(render)
    def guarded(request: Any, *args: Any, **kwargs: Any) -> Any:
        refusal = getattr(request, "refusal", None)
        if refusal is not None:
            raise refusal
        return render(request, *args, **kwargs)

    return guarded


class UploadProtocol(Protocol):
    """
    A protocol chunkd speaks: its name (upload records' and metrics'), its
    endpoints, the response headers browsers may read, and how it takes a
    reloaded config.
    """

    name: str
    exposedHeaders: List[str]

    def routes(self) -> Sequence[Route]:
        ...

    def reconfigure(self, config: Config) -> None:
        ...


class RouteTable:
    """
    Every protocol's routes on one Klein app, and the body routing that
    follows from them.
    """

    smallBodyLimit = 64 * 1024

    def __init__(self, app: Klein, authenticator: Optional[Authenticator] = None) -> None:
        self.app = app
        #: who is asking, decided once per request at the end of its headers
        self.authenticator = authenticator
        self._bodies: Dict[str, Tuple[str, Optional[BodyFactory], bool, bool]] = {}
        self._diversions: List[Tuple[bytes, bytes, bytes]] = []
        self._adapter: Any = None
        #: the installed protocols by name
        self.protocols: Dict[str, UploadProtocol] = {}

    def install(self, protocol: UploadProtocol) -> None:
        """Add every route of C{protocol}."""
        self.protocols[protocol.name] = protocol
        for route in protocol.routes():
            self.add(protocol.name, route)

    def add(self, protocol: str, route: Route) -> None:
        endpoint = f"{protocol}:{','.join(route.methods)}:{route.path}"
        self.app.route(route.path, methods=list(route.methods), endpoint=endpoint)(_refusing(route.render))
        self._bodies[endpoint] = (route.label or protocol, route.body, route.public, route.anyProtocol)
        self._adapter = None

    def divert(self, mount: str, header: str, to: str) -> None:
        """
        Route requests under C{mount} that carry C{header} as if they were
        sent under C{to}: one mount serving two protocols, told apart by a
        header (a tus path speaks the IETF draft when a request names an
        interop version).
        """
        self._diversions.append((mount.rstrip("/").encode(), header.lower().encode(),
                                 to.rstrip("/").encode()))

    def _diverted(self, request: Any) -> bytes:
        path: bytes = request.path
        for mount, header, to in self._diversions:
            if (path == mount or path.startswith(mount + b"/")) and request.requestHeaders.hasHeader(header):
                return to + path[len(mount):]
        return path

    def match(self, method: bytes, path: bytes) -> Optional[Tuple[RouteMatch, Optional[BodyFactory]]]:
        """
        The route Klein will render C{method} C{path} with, if any.
        """
        if self._adapter is None:
            self._adapter = self.app.url_map.bind("chunkd", "/")
        try:
            pathInfo = unquote(path.decode("latin-1"), errors="strict")
            endpoint, args = self._adapter.match(pathInfo, method.decode("latin-1"))
        except (HTTPException, RequestRedirect, UnicodeError):
            return None
        label, body, public, anyProtocol = self._bodies.get(endpoint, ("other", None, True, False))
        return RouteMatch(label, endpoint, args, public, anyProtocol), body

    def principalFor(self, request: Any, match: RouteMatch) -> Principal:
        """
        Who asks, and whether their token allows this route's protocol.
        Public routes and every OPTIONS (CORS preflights cannot carry a
        token; tus's OPTIONS only describes the server) need no token.
        Without any token configured, an Authorization header is not
        chunkd's (a proxy's basic auth, a gateway's token) and is ignored.

        @raise UploadError: 401 or 403 (L{chunkd.auth}).
        """
        if (self.authenticator is None or not self.authenticator.enabled or match.public
                or request.method == b"OPTIONS"):
            return ANONYMOUS
        values = request.requestHeaders.getRawHeaders(b"authorization")
        if values and len(values) > 1:
            raise invalidToken("more than one Authorization header")
        principal = self.authenticator.authenticate(
            values[0].decode("latin-1") if values else None)
        if not match.anyProtocol:
            principal.checkProtocol(match.protocol)
        return principal

    def sinkFor(self, request: Any) -> BodySink:
        """
        Where C{request}'s body goes (called when its headers end): the
        matched route's body factory decides; any other body is small or
        refused (L{BoundedBody}).  Errors raised deciding are answered once
        the body has been discarded.
        """
        routed = self._diverted(request)
        if routed != request.path:
            request.routedPath = request.path = routed
        found = self.match(request.method, request.path)
        request.route = found[0] if found is not None else None
        if found is not None:
            try:
                request.principal = self.principalFor(request, found[0])
            except UploadError as e:
                # Refused before a byte of body is taken; the route answers
                # with the refusal once the body is discarded.
                request.refusal = e
                return DiscardBody(e)
        if found is None or found[1] is None:
            return BoundedBody(self.smallBodyLimit)
        match, factory = found
        assert factory is not None
        try:
            sink = factory(request, **match.args)
        except UploadError as e:
            return DiscardBody(e)
        except OSError as e:
            log.error("storage error choosing a body sink for {uri}: {error}", uri=request.uri, error=str(e))
            return DiscardBody(diskError(e, "reading the upload"))
        except Exception:
            log.failure("choosing a body sink for {uri}", uri=request.uri)
            return DiscardBody(internalError())
        return sink if sink is not None else BoundedBody(self.smallBodyLimit)
