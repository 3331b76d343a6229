"""
chunkd.web: the one place errors become answers, CORS, and the base URL
clients see -- on Twisted's DummyRequest, no socket; and what a real server
answers (and logs) for a URL Klein cannot route.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from chunkd.config import loadConfig
from chunkd.errors import OffsetMismatch, diskError, internalError
from chunkd.web import TURN_BYTES, Cors, baseURL, renderError
from tests.helpers import ServerTestCase, parseResponse, rawRequest


class Request(DummyRequest):
    """DummyRequest with what baseURL asks of a request."""

    def isSecure(self) -> bool:
        return False


def request(method: bytes = b"GET", headers: Optional[Dict[str, str]] = None) -> DummyRequest:
    r = Request([b""])
    r.method = method
    for name, value in (headers or {}).items():
        r.requestHeaders.setRawHeaders(name, [value])
    return r


def answered(r: DummyRequest, name: str) -> Optional[str]:
    values = r.responseHeaders.getRawHeaders(name)
    return values[0] if values else None


class RenderErrorTests(unittest.TestCase):
    def test_statusHeadersAndOneLine(self) -> None:
        r = request(b"PATCH")
        body = renderError(r, OffsetMismatch("Upload-Offset is 3 but the upload is at 5",
                                             headers={"Upload-Offset": "5"}))
        self.assertEqual(r.responseCode, 409)
        self.assertEqual(body, b"Upload-Offset is 3 but the upload is at 5\n")
        self.assertEqual(answered(r, "Upload-Offset"), "5")
        self.assertEqual(answered(r, "Content-Type"), "text/plain; charset=utf-8")
        self.assertEqual(answered(r, "Cache-Control"), "no-store")

    def test_headAnswersHaveNoBody(self) -> None:
        r = request(b"HEAD")
        self.assertEqual(renderError(r, internalError()), b"")
        self.assertEqual(r.responseCode, 500)

    def test_theDiskErrorMapNamesTheStepNeverThePath(self) -> None:
        import errno

        for number, status in ((errno.ENOSPC, 507), (errno.EDQUOT, 507), (errno.EFBIG, 507),
                               (errno.EIO, 500), (errno.EXDEV, 500), (errno.ENOTCONN, 503),
                               (errno.EBADFD, 503)):
            error = diskError(OSError(number, "text", "/secret/path"), "writing the upload")
            r = request()
            body = renderError(r, error)
            self.assertEqual(r.responseCode, status, number)
            self.assertNotIn(b"/secret", body)


class CorsTests(unittest.TestCase):
    def setUp(self) -> None:
        config = loadConfig(None, {"cors.allowed_origins": ["https://app.example"]})
        self.cors = Cors(config, ["Upload-Offset", "Location", "Upload-Offset"])

    def test_allowedOriginSeesExposedHeaders(self) -> None:
        r = request(headers={"Origin": "https://app.example"})
        self.cors.decorate(r)
        self.assertEqual(answered(r, "Access-Control-Allow-Origin"), "https://app.example")
        self.assertEqual(answered(r, "Access-Control-Expose-Headers"), "Location, Upload-Offset")
        self.assertEqual(answered(r, "Vary"), "Origin")
        self.assertIsNone(answered(r, "Access-Control-Allow-Methods"))

    def test_otherOriginsGetNothing(self) -> None:
        r = request(headers={"Origin": "https://evil.example"})
        self.cors.decorate(r)
        self.assertEqual(list(r.responseHeaders.getAllRawHeaders()), [])

    def test_preflightAnswersOnlyPlainHeaderNames(self) -> None:
        r = request(b"OPTIONS", {"Origin": "https://app.example",
                                 "Access-Control-Request-Headers": "tus-resumable, upload-offset"})
        self.cors.decorate(r)
        self.assertEqual(answered(r, "Access-Control-Allow-Headers"), "tus-resumable, upload-offset")
        self.assertIn("PATCH", answered(r, "Access-Control-Allow-Methods") or "")
        hostile = request(b"OPTIONS", {"Origin": "https://app.example",
                                       "Access-Control-Request-Headers": "x\r\nSet-Cookie: a=b"})
        self.cors.decorate(hostile)
        self.assertIsNone(answered(hostile, "Access-Control-Allow-Headers"))


class BaseURLTests(unittest.TestCase):
    def test_fromHost(self) -> None:
        self.assertEqual(baseURL(request(headers={"Host": "up.example:8080"}), False), "http://up.example:8080")

    def test_proxyHeadersOnlyWhenTrusted(self) -> None:
        headers = {"Host": "internal:8080", "X-Forwarded-Proto": "https",
                   "X-Forwarded-Host": "up.example", "X-Forwarded-Prefix": "/api"}
        self.assertEqual(baseURL(request(headers=headers), False), "http://internal:8080")
        self.assertEqual(baseURL(request(headers=headers), True), "https://up.example/api")
        forwarded = {"Host": "internal", "Forwarded": 'proto=https;host="up.example"'}
        self.assertEqual(baseURL(request(headers=forwarded), True), "https://up.example")

    def test_hostileHostsAreIgnored(self) -> None:
        r = request(headers={"Host": "evil.example/<script>"})
        url = baseURL(r, True)
        self.assertNotIn("evil", url)
        self.assertTrue(url.startswith("http://"))


class UndecodableRequestTests(ServerTestCase):
    """
    A URL that is not UTF-8 is the client's error: a 400 with its reason
    and one log line, never a traceback in the log (Klein logged one per
    request, which let any client flood the journal).
    """

    @defer.inlineCallbacks
    def test_nonUTF8URLsAre400AndLogNoTraceback(self) -> Any:
        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        cases = [
            (b"GET /files/%ff HTTP/1.1\r\nHost: x", b"the URL path is not valid UTF-8\n"),
            (b"PATCH /files/%C3%28/x HTTP/1.1\r\nHost: x\r\nContent-Length: 0", b"the URL path is not valid UTF-8\n"),
            (b"GET /health HTTP/1.1\r\nHost: \xff\xfe", b"the Host header is not valid UTF-8\n"),
            (b"GET /files/\xff HTTP/1.1\r\nHost: x", b"malformed request line\n"),
        ]
        for head, reason in cases:
            raw = yield rawRequest(self.port.getHost().port, head + b"\r\nConnection: close\r\n\r\n")
            status, _, body = parseResponse(raw)
            self.assertEqual((status, body), (400, reason), head)
        self.assertEqual([e for e in events if "log_failure" in e], [])
        text = "\n".join(formatEvent(e) or "" for e in events)
        self.assertNotIn("Traceback", text)
        # One line per request at most (the client's own factories log too).
        server = [e for e in events if not str(e.get("log_namespace")).startswith("twisted.internet")]
        self.assertLessEqual(len(server), len(cases), text)


class RoutingErrorTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_unknownPathIs404NotMethodNotAllowed(self) -> Any:
        """
        The CORS preflight route matches every path for OPTIONS; a GET of a
        path nothing serves is still "no such resource", not 405.
        """
        response = yield self.client.get(self.url("/no/such/thing"))
        body = yield response.content()
        self.assertEqual((response.code, body), (404, b"no such resource\n"))
        response = yield self.client.delete(self.url("/files/"))
        yield response.content()
        self.assertEqual(response.code, 405)


class BodyReadSizeTests(ServerTestCase):
    """
    ChunkdSite.bodyReadSize: disk.read_size while few bodies stream, down to
    half of it as more do, so one reactor turn reads about TURN_BYTES.
    """

    def sizeWith(self, streams: int) -> int:
        self.site.streamingBodies = lambda: streams
        return self.site.bodyReadSize()

    def test_fewBodiesReadTheConfiguredSize(self) -> None:
        self.assertEqual(self.site.readSize, 256 * 1024)
        self.assertEqual([self.sizeWith(n) for n in (0, 1, 8)], [256 * 1024] * 3)

    def test_moreBodiesReadLessDownToHalf(self) -> None:
        self.assertEqual(self.sizeWith(9), TURN_BYTES // 9)
        self.assertEqual([self.sizeWith(n) for n in (16, 64, 1000)], [128 * 1024] * 3)

    def test_theSiteCountsTheDisksStreamingBodies(self) -> None:
        self.assertEqual(self.site.streamingBodies(), self.disk.streamingBodies())
