"""
chunkd.routes: one declaration per endpoint decides both where a body goes
and which handler answers -- matched against Klein's own rules.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from twisted.trial import unittest
from twisted.web.http_headers import Headers

from chunkd.errors import BadRequest, TooLarge, UploadError
from chunkd.routes import Route, RouteMatch
from chunkd.streaming import BoundedBody, DiscardBody
from chunkd.web import buildRoutes
from tests.helpers import RecordingSink


class FakeRequest:
    def __init__(self, method: bytes, path: bytes, headers: Optional[Dict[str, str]] = None) -> None:
        self.method = method
        self.path = path
        self.uri = path
        self.route: Optional[RouteMatch] = None
        self.routedPath: Optional[bytes] = None
        self.requestHeaders = Headers({k: [v] for k, v in (headers or {}).items()})


class Items:
    """A protocol with the same handler names as Other: they must not clash."""

    exposedHeaders: List[str] = ["X-Items"]

    def __init__(self, name: str, mount: str) -> None:
        self.name = name
        self.mount = mount
        self.sinks: List[Dict[str, Any]] = []

    def routes(self) -> Sequence[Route]:
        return [
            Route(self.mount, ("POST",), self.created, body=self.creating),
            Route(self.mount + "/<item_id>", ("PATCH",), self.patched, body=self.patching),
            Route(self.mount + "/<item_id>", ("HEAD", "GET"), self.created),
            Route("/status", ("GET",), self.created, label="other"),
        ]

    def reconfigure(self, config: Any) -> None:
        pass

    def creating(self, request: Any) -> Any:
        self.sinks.append({"kind": "create"})
        return RecordingSink()

    def patching(self, request: Any, item_id: str) -> Any:
        if item_id == "bad":
            raise BadRequest("bad item")
        if item_id == "boom":
            raise RuntimeError("bug")
        if item_id == "stale":
            raise OSError(116, "Stale file handle")
        if item_id == "small":
            return None
        self.sinks.append({"kind": "patch", "id": item_id})
        return RecordingSink()

    def created(self, request: Any, **kw: Any) -> bytes:
        return b""

    def patched(self, request: Any, item_id: str) -> bytes:
        return b""


class RouteTableTests(unittest.TestCase):
    def setUp(self) -> None:
        self.items = Items("items", "/items")
        self.other = Items("other-items", "/other")
        self.routes, self.exposed = buildRoutes([self.items, self.other])

    def sinkFor(self, method: bytes, path: bytes, headers: Optional[Dict[str, str]] = None) -> Any:
        request = FakeRequest(method, path, headers)
        sink = self.routes.sinkFor(request)
        return request, sink

    def test_theRoutesBodyFactoryDecidesWithThePathsArguments(self) -> None:
        request, sink = self.sinkFor(b"PATCH", b"/items/abc")
        self.assertIsInstance(sink, RecordingSink)
        self.assertEqual(self.items.sinks, [{"kind": "patch", "id": "abc"}])
        assert request.route is not None
        self.assertEqual((request.route.protocol, request.route.args), ("items", {"item_id": "abc"}))
        request, sink = self.sinkFor(b"POST", b"/other")
        self.assertEqual(self.other.sinks, [{"kind": "create"}])
        self.assertEqual(request.route.protocol, "other-items")

    def test_aDivertedMountIsRoutedByItsHeader(self) -> None:
        """
        One mount, two protocols told apart by a header: with it, the
        request is routed (body and answer) as if sent to the other mount,
        and keeps the path it came with in C{uri}.
        """
        self.routes.divert("/other", "X-Dialect", "/items")
        request, _ = self.sinkFor(b"PATCH", b"/other/abc", {"X-Dialect": "1"})
        self.assertEqual((request.route.protocol, request.path, request.routedPath, request.uri),
                         ("items", b"/items/abc", b"/items/abc", b"/other/abc"))
        self.assertEqual(self.items.sinks, [{"kind": "patch", "id": "abc"}])
        request, _ = self.sinkFor(b"PATCH", b"/other/abc")
        self.assertEqual((request.route.protocol, request.routedPath), ("other-items", None))
        # Only under the mount: /otherwise is not /other.
        request, _ = self.sinkFor(b"POST", b"/otherwise", {"X-Dialect": "1"})
        self.assertIsNone(request.routedPath)

    def test_sameHandlerNamesDoNotClash(self) -> None:
        endpoints = {rule.endpoint for rule in self.routes.app.url_map.iter_rules()}
        self.assertIn("items:PATCH:/items/<item_id>", endpoints)
        self.assertIn("other-items:PATCH:/other/<item_id>", endpoints)

    def test_noBodyRouteMeansABoundedBody(self) -> None:
        for method, path in ((b"GET", b"/items/abc"), (b"DELETE", b"/items/abc"),
                             (b"POST", b"/nowhere"), (b"PATCH", b"/items/small")):
            request, sink = self.sinkFor(method, path)
            self.assertIsInstance(sink, BoundedBody, (method, path))

    def test_unmatchedRequestsAreLabelledOther(self) -> None:
        request, _ = self.sinkFor(b"POST", b"/nowhere")
        self.assertIsNone(request.route)
        request, _ = self.sinkFor(b"GET", b"/status")
        self.assertEqual(request.route.protocol, "other")

    def test_anErrorDecidingIsAnsweredAfterTheBody(self) -> None:
        _, sink = self.sinkFor(b"PATCH", b"/items/bad")
        self.assertIsInstance(sink, DiscardBody)
        self.failureResultOf(sink.result(), BadRequest)

    def test_aBugDecidingIsA500AndLogged(self) -> None:
        _, sink = self.sinkFor(b"PATCH", b"/items/boom")
        failure = self.failureResultOf(sink.result(), UploadError)
        self.assertEqual((failure.value.status, failure.value.reason), (500, "internal error"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_aStorageErrorDecidingIsMappedNotATraceback(self) -> None:
        _, sink = self.sinkFor(b"PATCH", b"/items/stale")
        failure = self.failureResultOf(sink.result(), UploadError)
        self.assertEqual((failure.value.status, failure.value.reason), (500, "reading the upload failed"))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_percentEncodedPathsMatchAsKleinDecodesThem(self) -> None:
        request, sink = self.sinkFor(b"PATCH", b"/items/a%20b")
        self.assertEqual(request.route.args, {"item_id": "a b"})
        request, sink = self.sinkFor(b"PATCH", b"/items/%ff")
        self.assertIsInstance(sink, BoundedBody)  # not UTF-8: no route, no sink

    def test_exposedHeadersOfEveryProtocol(self) -> None:
        # WWW-Authenticate: a browser client reads why a token was refused.
        self.assertEqual(self.exposed, ["WWW-Authenticate", "X-Items", "X-Items"])

    def test_oversizedSmallBodiesAreRefused(self) -> None:
        _, sink = self.sinkFor(b"POST", b"/nowhere")
        sink.dataReceived(b"x" * (self.routes.smallBodyLimit + 1))
        self.failureResultOf(sink.result(), TooLarge)
