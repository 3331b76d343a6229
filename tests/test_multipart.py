"""
The streaming C{multipart/form-data} sink on its own: bodies fed piece by
piece to L{MultipartSink}, the file part reaching an in-memory sink.  No
socket, no HTTP.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from chunkd.errors import BadRequest, Conflict, TooLarge, UnsupportedMediaType
from chunkd.multipart import MultipartSink, boundaryOf
from tests.helpers import BOUNDARY, RecordingSink, multipartBody


class BoundaryTests(unittest.SynchronousTestCase):
    def test_plain(self) -> None:
        self.assertEqual(boundaryOf("multipart/form-data; boundary=----WebKitFormBoundaryq0bI"),
                         b"----WebKitFormBoundaryq0bI")

    def test_quoted(self) -> None:
        self.assertEqual(boundaryOf('multipart/form-data; boundary="a b:c"'), b"a b:c")

    def test_caseAndOtherParameters(self) -> None:
        self.assertEqual(boundaryOf("Multipart/Form-Data ; charset=utf-8;  BOUNDARY = xyz "), b"xyz")

    def test_longestBoundary(self) -> None:
        self.assertEqual(boundaryOf("multipart/form-data; boundary=" + "b" * 200), b"b" * 200)

    def test_missingOrUnusableBoundaryIsBadRequest(self) -> None:
        for contentType in ("multipart/form-data", "multipart/form-data; charset=utf-8",
                            "multipart/form-data; boundary=", 'multipart/form-data; boundary=""',
                            "multipart/form-data; boundary=" + "b" * 201):
            error = self.assertRaises(BadRequest, boundaryOf, contentType)
            self.assertEqual(error.status, 400, contentType)
            self.assertIn("boundary", error.reason)

    def test_wrongTypeIsUnsupported(self) -> None:
        for contentType in (None, "", "application/json", "multipart/mixed; boundary=x",
                            "text/plain; boundary=x", "application/x-www-form-urlencoded"):
            error = self.assertRaises(UnsupportedMediaType, boundaryOf, contentType)
            self.assertEqual(error.status, 415, contentType)


def pieces(data: bytes, sizes: List[int]) -> List[bytes]:
    """C{data} cut into pieces of the given sizes in turn (the last may be short)."""
    out, i, k = [], 0, 0
    while i < len(data):
        size = sizes[k % len(sizes)]
        out.append(data[i:i + size])
        i += size
        k += 1
    return out


class MultipartSinkTests(unittest.TestCase):
    def setUp(self) -> None:
        self.opened: List[Dict[str, str]] = []
        self.fileSink = RecordingSink("written")
        self.openError: Optional[Exception] = None

    def openFile(self, fields: Dict[str, str]) -> RecordingSink:
        self.opened.append(fields)
        if self.openError is not None:
            raise self.openError
        return self.fileSink

    def sink(self, **limits: int) -> MultipartSink:
        s = MultipartSink(BOUNDARY, "chunk", self.openFile)
        for name, value in limits.items():
            setattr(s, name, value)
        return s

    def feed(self, body: bytes, sizes: Optional[List[int]] = None, **limits: int) -> MultipartSink:
        s = self.sink(**limits)
        for piece in pieces(body, sizes) if sizes else [body]:
            s.dataReceived(piece)
        s.bodyEnded(Headers())
        return s

    @defer.inlineCallbacks
    def assertRefused(self, s: MultipartSink, fragment: str, opened: bool = False) -> Any:
        """
        C{s} fails with a L{BadRequest} whose reason holds C{fragment}; the
        file was never opened (unless C{opened}).
        """
        if not opened:
            self.assertEqual(self.opened, [])
        error = yield self.assertFailure(s.result(), BadRequest)
        self.assertIn(fragment, error.reason)

    @defer.inlineCallbacks
    def test_fieldsBeforeTheFileReachOpenFile(self) -> Any:
        data = b"the chunk"
        s = self.feed(multipartBody(data, {"flowChunkNumber": "3", "flowFilename": "r\u00e9sum\u00e9.pdf"}))
        self.assertEqual(self.opened, [{"flowChunkNumber": "3", "flowFilename": "r\u00e9sum\u00e9.pdf"}])
        self.assertEqual(self.fileSink.data, data)
        self.assertEqual(self.fileSink.ended[0], "bodyEnded")
        self.assertEqual(s.fields, {"flowChunkNumber": "3", "flowFilename": "r\u00e9sum\u00e9.pdf"})
        self.assertEqual((yield s.result()), "written")

    @defer.inlineCallbacks
    def test_fieldsAfterTheFileAreKeptButNotGivenToOpenFile(self) -> Any:
        body = multipartBody(b"xyz", {"before": "1"})
        trailer = (b"--%s\r\nContent-Disposition: form-data; name=\"after\"\r\n\r\n2\r\n--%s--\r\n"
                   % (BOUNDARY, BOUNDARY))
        body = body[: body.rindex(b"--%s--" % BOUNDARY)] + trailer
        s = self.feed(body)
        self.assertEqual(self.opened, [{"before": "1"}])
        self.assertEqual(s.fields, {"before": "1", "after": "2"})
        self.assertEqual(self.fileSink.data, b"xyz")
        self.assertEqual((yield s.result()), "written")

    def test_fileBytesSplitAnywhereArriveExactly(self) -> None:
        # Bytes that look like the start of a boundary, inside the file.
        data = (b"\r\n--" + BOUNDARY[:-1] + b"\r\n" + bytes(range(256)) + b"--\r\n--") * 40
        body = multipartBody(data, {"resumableChunkNumber": "1"})
        rng = random.Random(20240611)
        splits = [[1], [2], [3], [7], [64], [len(body) - 1], [1, 200, 3, 4096]]
        splits += [[rng.randint(1, 300) for _ in range(20)] for _ in range(10)]
        for sizes in splits:
            self.fileSink = RecordingSink("written")
            self.opened = []
            s = self.feed(body, sizes)
            self.assertEqual(self.fileSink.data, data, sizes)
            self.assertEqual(self.fileSink.ended[0], "bodyEnded", sizes)
            self.assertEqual(self.opened, [{"resumableChunkNumber": "1"}], sizes)
            self.assertEqual(s.fields, {"resumableChunkNumber": "1"})

    def test_emptyFile(self) -> None:
        self.feed(multipartBody(b""))
        self.assertEqual((self.fileSink.data, self.fileSink.ended[0]), (b"", "bodyEnded"))

    @defer.inlineCallbacks
    def test_malformedPartHeaderIsBadRequest(self) -> Any:
        body = b"--%s\r\nnot a header line\r\n\r\nx\r\n--%s--\r\n" % (BOUNDARY, BOUNDARY)
        s = self.feed(body)
        yield self.assertRefused(s, "malformed multipart body")

    @defer.inlineCallbacks
    def test_wrongBoundaryIsBadRequest(self) -> Any:
        s = self.feed(multipartBody(b"abc", boundary=b"some-other-boundary"))
        yield self.assertRefused(s, "multipart")

    @defer.inlineCallbacks
    def test_bodyEndingInsideTheFileIsBadRequest(self) -> Any:
        body = multipartBody(b"0123456789")
        cut = body[: body.index(b"0123456789") + 6]
        s = self.feed(cut)
        # The file sink saw the body fail, not end...
        self.assertEqual(self.fileSink.ended[0], "bodyFailed")
        self.assertIsInstance(self.fileSink.ended[1].value, BadRequest)
        self.assertTrue(b"012345".startswith(self.fileSink.data), self.fileSink.data)
        # ...and the request fails although the file sink itself succeeded.
        yield self.assertRefused(s, "incomplete multipart body", opened=True)

    @defer.inlineCallbacks
    def test_parseErrorAfterTheFileFailsTheRequest(self) -> Any:
        s = self.sink()
        body = multipartBody(b"abc")
        s.dataReceived(body[: body.index(b"abc")])
        self.assertEqual(len(self.opened), 1)
        # The file part ends, then a part with garbage for headers.
        s.dataReceived(b"abc\r\n--%s\r\nno colon here\r\n\r\n" % BOUNDARY)
        s.dataReceived(b"ignored after the error")
        s.bodyEnded(Headers())
        self.assertEqual((self.fileSink.data, self.fileSink.ended[0]), (b"abc", "bodyEnded"))
        yield self.assertRefused(s, "malformed multipart body", opened=True)

    @defer.inlineCallbacks
    def test_tooManyPartHeadersIsBadRequest(self) -> Any:
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(16))
        body = (b"--%s\r\nContent-Disposition: form-data; name=\"chunk\"; filename=\"b\"\r\n%s\r\nabc\r\n--%s--\r\n"
                % (BOUNDARY, headers, BOUNDARY))
        s = self.feed(body)
        yield self.assertRefused(s, "malformed multipart body")

    @defer.inlineCallbacks
    def test_fileSinkRefusingDataFailsIt(self) -> Any:
        """
        An L{UploadError} from the file sink mid-part (a chunk past its
        limit) stops the parse; the file sink is told the body failed.
        """
        refusal = TooLarge("past the chunk limit")

        class Refusing(RecordingSink):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                raise refusal

        self.fileSink = Refusing("written")
        s = self.sink()
        body = multipartBody(b"0123456789")
        s.dataReceived(body[: body.index(b"0123456789") + 4])
        s.dataReceived(body[body.index(b"0123456789") + 4:])  # ignored: the body failed already
        s.bodyEnded(Headers())
        self.assertEqual(self.fileSink.data, b"0123")
        self.assertEqual(self.fileSink.ended[0], "bodyFailed")
        self.assertIs(self.fileSink.ended[1].value, refusal)
        self.assertEqual(len(self.fileSink.events), 2)  # one piece, then the failure
        error = yield self.assertFailure(s.result(), TooLarge)
        self.assertIs(error, refusal)

    @defer.inlineCallbacks
    def test_missingFilePartIsBadRequest(self) -> Any:
        body = multipartBody(b"abc", {"a": "1"}, name="file")
        s = self.feed(body)
        self.assertEqual(s.fields, {"a": "1", "file": "abc"})
        yield self.assertRefused(s, "no form part named 'chunk'")

    @defer.inlineCallbacks
    def test_tooManyFields(self) -> Any:
        fields = {f"f{i}": str(i) for i in range(4)}
        s = self.feed(multipartBody(b"abc", fields), maxFields=3)
        yield self.assertRefused(s, "too many form fields")

    @defer.inlineCallbacks
    def test_asManyFieldsAsAllowed(self) -> Any:
        fields = {f"f{i}": str(i) for i in range(3)}
        s = self.feed(multipartBody(b"abc", fields), maxFields=3)
        self.assertEqual(self.opened, [fields])
        self.assertEqual((yield s.result()), "written")

    @defer.inlineCallbacks
    def test_tooLargeField(self) -> Any:
        s = self.feed(multipartBody(b"abc", {"name": "x" * 11}), [4], maxFieldSize=10)
        yield self.assertRefused(s, "form field 'name' is too large")

    @defer.inlineCallbacks
    def test_fieldOfTheLargestSize(self) -> Any:
        s = self.feed(multipartBody(b"abc", {"name": "x" * 10}), [4], maxFieldSize=10)
        self.assertEqual(self.opened, [{"name": "x" * 10}])
        self.assertEqual((yield s.result()), "written")

    @defer.inlineCallbacks
    def test_openFileRefusing(self) -> Any:
        self.openError = Conflict("another chunk is being written")
        s = self.feed(multipartBody(b"abc", {"a": "1"}))
        self.assertEqual(self.opened, [{"a": "1"}])
        error = yield self.assertFailure(s.result(), Conflict)
        self.assertIs(error, self.openError)

    @defer.inlineCallbacks
    def test_fileSinkFailureIsTheResult(self) -> Any:
        self.fileSink = RecordingSink(Failure(Conflict("offset moved")))
        s = self.feed(multipartBody(b"abc"))
        yield self.assertFailure(s.result(), Conflict)

    @defer.inlineCallbacks
    def test_connectionLostInsideTheFile(self) -> Any:
        s = self.sink()
        body = multipartBody(b"0123456789")
        s.dataReceived(body[: body.index(b"0123456789") + 4])
        reason = Failure(ConnectionLost())
        s.bodyFailed(reason)
        self.assertEqual(self.fileSink.ended, ("bodyFailed", reason))
        # The file sink decides what the cut-off body means.
        self.assertEqual((yield s.result()), "written")

    @defer.inlineCallbacks
    def test_connectionLostBeforeTheFile(self) -> Any:
        s = self.sink()
        s.dataReceived(multipartBody(b"abc", {"a": "1"})[:20])
        s.bodyFailed(Failure(ConnectionLost()))
        yield self.assertRefused(s, "no form part named 'chunk'")
