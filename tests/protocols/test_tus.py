"""
tus 1.0.0 over a real socket: every rule has a test that breaks it.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any, List

from twisted.internet import defer

from tests.helpers import OCTETS, TUS, TusTestCase, h, parseResponse, randomBytes, rawRequest, uploadFiles

class CoreTests(TusTestCase):
    @defer.inlineCallbacks
    def test_uploadInTwoPatchesThenDownload(self) -> Any:
        data = randomBytes(300 * 1024)
        uploadId = yield self.createId(len(data))
        r = yield self.patch(uploadId, 0, data[:100000])
        self.assertEqual((r.code, h(r, "upload-offset"), h(r, "tus-resumable")), (204, "100000", "1.0.0"))
        r = yield self.head(uploadId)
        self.assertEqual((r.code, h(r, "upload-offset"), h(r, "upload-length")), (200, "100000", str(len(data))))
        self.assertEqual(h(r, "cache-control"), "no-store")
        r = yield self.patch(uploadId, 100000, data[100000:])
        self.assertEqual(h(r, "upload-offset"), str(len(data)))
        self.assertIsNone(h(r, "upload-expires"))
        r = yield self.client.get(self.url(f"/files/{uploadId}"))
        body = yield r.content()
        self.assertEqual(body, data)
        self.assertEqual(self.dataOf(uploadId), data)

    @defer.inlineCallbacks
    def test_missingVersionIs412(self) -> Any:
        uploadId = yield self.createId(10)
        for version in (None, "0.2.2"):
            headers = {} if version is None else {"Tus-Resumable": version}
            r = yield self.client.head(self.url(f"/files/{uploadId}"), headers=headers)
            self.assertEqual((r.code, h(r, "tus-version")), (412, "1.0.0"))
            self.assertIsNone(h(r, "upload-offset"))
        r = yield self.client.patch(self.url(f"/files/{uploadId}"), data=b"abc",
                                    headers={"Upload-Offset": "0", "Content-Type": OCTETS})
        yield r.content()
        self.assertEqual(r.code, 412)
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), "0")

    @defer.inlineCallbacks
    def test_options(self) -> Any:
        r = yield self.client.request("OPTIONS", self.url("/files/"))
        yield r.content()
        self.assertEqual((r.code, h(r, "tus-version")), (200, "1.0.0"))
        extensions = h(r, "tus-extension").split(",")
        for ext in ("creation", "creation-with-upload", "creation-defer-length", "expiration",
                    "checksum", "checksum-trailer", "termination", "concatenation",
                    "concatenation-unfinished"):
            self.assertIn(ext, extensions)
        self.assertEqual(h(r, "tus-checksum-algorithm"), "sha1,md5,sha256,sha512")
        self.assertIsNone(h(r, "tus-max-size"))

    @defer.inlineCallbacks
    def test_wrongOffsetIs409WithCurrentOffset(self) -> Any:
        uploadId = yield self.createId(10)
        yield self.patch(uploadId, 0, b"abc")
        r = yield self.patch(uploadId, 5, b"defg")
        self.assertEqual((r.code, h(r, "upload-offset")), (409, "3"))
        self.assertIn(b"at 3", r.text_)
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), "3")

    @defer.inlineCallbacks
    def test_wrongContentTypeIs415(self) -> Any:
        uploadId = yield self.createId(10)
        r = yield self.patch(uploadId, 0, b"abc", {"Content-Type": "application/octet-stream"})
        self.assertEqual(r.code, 415)
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), "0")

    @defer.inlineCallbacks
    def test_bodyPastLengthIs413AndKeepsNothing(self) -> Any:
        uploadId = yield self.createId(10)
        r = yield self.patch(uploadId, 0, b"x" * 11)
        self.assertEqual(r.code, 413)
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), "0")

    @defer.inlineCallbacks
    def test_unknownUploadIs404(self) -> Any:
        for name in ("0" * 32, "not-an-id", "..%2F..%2Fetc%2Fpasswd", "..%2Fuploads"):
            r = yield self.head(name)
            self.assertIn(r.code, (404, 405), name)
            r = yield self.patch(name, 0, b"abc")
            self.assertIn(r.code, (404, 405), name)
        self.assertEqual(sorted(os.listdir(self.storage)), ["uploads"])
        self.assertEqual(os.listdir(os.path.join(self.storage, "uploads")), [])

    @defer.inlineCallbacks
    def test_methodOverride(self) -> Any:
        uploadId = yield self.createId(3)
        r = yield self.client.post(self.url(f"/files/{uploadId}"), data=b"abc", headers=dict(
            TUS, **{"X-HTTP-Method-Override": "PATCH", "Upload-Offset": "0", "Content-Type": OCTETS}))
        yield r.content()
        self.assertEqual((r.code, h(r, "upload-offset")), (204, "3"))
        r = yield self.client.post(self.url(f"/files/{uploadId}"), headers=dict(
            TUS, **{"X-HTTP-Method-Override": "DELETE"}))
        yield r.content()
        self.assertEqual(r.code, 204)
        r = yield self.head(uploadId)
        self.assertEqual(r.code, 410)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class CreationTests(TusTestCase):
    @defer.inlineCallbacks
    def test_absoluteLocationFromHost(self) -> Any:
        r = yield self.create(5)
        self.assertEqual(r.code, 201)
        location = h(r, "location")
        self.assertTrue(location.startswith(self.base + "/files/"), location)
        self.assertIsNotNone(h(r, "upload-expires"))
        self.assertIsNone(h(r, "upload-offset"))

    @defer.inlineCallbacks
    def test_forwardedHeadersIgnoredUnlessTrusted(self) -> Any:
        r = yield self.create(5, {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"})
        self.assertTrue(h(r, "location").startswith(self.base), h(r, "location"))

    @defer.inlineCallbacks
    def test_neitherOrBothLengthHeadersIs400(self) -> Any:
        r = yield self.create()
        self.assertEqual(r.code, 400)
        r = yield self.create(5, {"Upload-Defer-Length": "1"})
        self.assertEqual(r.code, 400)
        r = yield self.create(None, {"Upload-Defer-Length": "2"})
        self.assertEqual(r.code, 400)

    @defer.inlineCallbacks
    def test_badNumbersAre400(self) -> Any:
        for value in ("-1", "abc", "1.5", " ", "1e3", "99999999999999999999"):
            r = yield self.create(None, {"Upload-Length": value})
            self.assertEqual(r.code, 400, value)
        uploadId = yield self.createId(10)
        for value in ("-1", "x", ""):
            r = yield self.patch(uploadId, 0, b"abc", {"Upload-Offset": value})
            self.assertEqual(r.code, 400, value)

    @defer.inlineCallbacks
    def test_metadataRoundTrips(self) -> Any:
        raw = f"filename {b64('ünï.txt')},filetype {b64('text/plain')},empty"
        uploadId = yield self.createId(3, {"Upload-Metadata": raw})
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-metadata"), raw)
        record = self.store.get(uploadId)
        self.assertEqual(record.metadata, {"filename": "ünï.txt", "filetype": "text/plain", "empty": None})

    @defer.inlineCallbacks
    def test_emptyMetadataHeaderMeansNone(self) -> Any:
        uploadId = yield self.createId(3, {"Upload-Metadata": ""})
        r = yield self.head(uploadId)
        self.assertIsNone(h(r, "upload-metadata"))

    @defer.inlineCallbacks
    def test_malformedMetadataIs400(self) -> Any:
        for raw in ("key not*base64", "a b c", f"k {b64('x')},k {b64('y')}", f"a {b64('x')},, b", ",", f"k {b64('x')},"):
            r = yield self.create(3, {"Upload-Metadata": raw})
            self.assertEqual(r.code, 400, raw)

    @defer.inlineCallbacks
    def test_zeroLengthIsCompleteAtOnce(self) -> Any:
        uploadId = yield self.createId(0)
        r = yield self.head(uploadId)
        self.assertEqual((h(r, "upload-offset"), h(r, "upload-length")), ("0", "0"))
        self.assertIsNone(h(r, "upload-expires"))
        r = yield self.client.get(self.url(f"/files/{uploadId}"))
        self.assertEqual((r.code, (yield r.content())), (200, b""))

    @defer.inlineCallbacks
    def test_creationWithUpload(self) -> Any:
        data = randomBytes(200 * 1024)
        r = yield self.create(len(data) + 10, {"Content-Type": OCTETS}, data=data)
        self.assertEqual((r.code, h(r, "upload-offset")), (201, str(len(data))))
        uploadId = h(r, "location").rsplit("/", 1)[1]
        self.assertEqual(self.dataOf(uploadId)[: len(data)], data)
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), str(len(data)))

    @defer.inlineCallbacks
    def test_creationWithUploadOfAnotherContentTypeIs415(self) -> Any:
        """
        The tus conformance suite's rule: a creation body that is not
        application/offset+octet-stream is refused, and nothing is created
        (it used to be created with its body silently dropped).
        """
        for contentType in ("application/octet-stream", "text/plain", None):
            headers = {"Content-Type": contentType} if contentType else {}
            r = yield self.create(3, headers, data=b"abc")
            self.assertEqual(r.code, 415, contentType)
        self.assertEqual(os.listdir(os.path.join(self.storage, "uploads")) if os.path.isdir(
            os.path.join(self.storage, "uploads")) else [], [])
        # Without a body, any Content-Type still creates.
        r = yield self.create(3, {"Content-Type": "application/json"})
        self.assertEqual(r.code, 201)

    @defer.inlineCallbacks
    def test_creationWithUploadTooLongIs413(self) -> Any:
        r = yield self.create(3, {"Content-Type": OCTETS}, data=b"abcdef")
        self.assertEqual(r.code, 413)

    def uploadFiles(self) -> List[str]:
        return uploadFiles(self.storage)

    @defer.inlineCallbacks
    def test_refusedCreationWithUploadLeavesNoUpload(self) -> Any:
        # A refused request changes nothing: neither a body longer than the
        # length (refused before creating, even for a 0-byte upload, which
        # would be complete at once) nor a checksum mismatch or a chunked
        # body running past the length (found once the upload exists).
        for length in (0, 3):
            r = yield self.create(length, {"Content-Type": OCTETS}, data=b"abcdef")
            self.assertEqual(r.code, 413)
        digest = base64.b64encode(hashlib.sha1(b"abc").digest()).decode()
        r = yield self.create(3, {"Content-Type": OCTETS, "Upload-Checksum": f"sha1 {digest}"}, data=b"abd")
        self.assertEqual(r.code, 460)
        raw = yield rawRequest(self.port.getHost().port, (
            b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 2\r\n"
            b"Content-Type: application/offset+octet-stream\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n0\r\n\r\n"))
        self.assertEqual(parseResponse(raw)[0], 413)
        self.assertEqual([n for n in self.uploadFiles() if not n.endswith(".lock")], [])

    @defer.inlineCallbacks
    def test_creationWithUploadChecksum(self) -> Any:
        digest = base64.b64encode(hashlib.sha1(b"abc").digest()).decode()
        r = yield self.create(3, {"Content-Type": OCTETS, "Upload-Checksum": f"sha1 {digest}"}, data=b"abc")
        self.assertEqual((r.code, h(r, "upload-offset")), (201, "3"))
        r = yield self.create(3, {"Content-Type": OCTETS, "Upload-Checksum": f"sha1 {digest}"}, data=b"abd")
        self.assertEqual(r.code, 460)

    @defer.inlineCallbacks
    def test_creationWithUploadAndExpectContinue(self) -> Any:
        body = b"hello world"
        request = (
            b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 11\r\n"
            b"Content-Type: application/offset+octet-stream\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\nContent-Length: 11\r\n\r\n" + body
        )
        raw = yield rawRequest(self.port.getHost().port, request)
        self.assertTrue(raw.startswith(b"HTTP/1.1 100 Continue"), raw[:40])
        status, headers, _ = parseResponse(raw)
        self.assertEqual((status, headers["upload-offset"]), (201, "11"))
        self.assertEqual(self.dataOf(headers["location"].rsplit("/", 1)[1]), body)


class LimitTests(TusTestCase):
    overrides = {"limits.max_size": "1KiB"}

    @defer.inlineCallbacks
    def test_maxSizeAdvertisedAndEnforced(self) -> Any:
        r = yield self.client.request("OPTIONS", self.url("/files/"))
        yield r.content()
        self.assertEqual(h(r, "tus-max-size"), "1024")
        r = yield self.create(1025)
        self.assertEqual(r.code, 413)
        r = yield self.create(1024)
        self.assertEqual(r.code, 201)

    @defer.inlineCallbacks
    def test_deferredLengthStillLimited(self) -> Any:
        uploadId = yield self.createId(None, {"Upload-Defer-Length": "1"})
        r = yield self.patch(uploadId, 0, b"x" * 1025)
        self.assertEqual(r.code, 413)
        r = yield self.patch(uploadId, 0, b"x", {"Upload-Length": "2000"})
        self.assertEqual(r.code, 413)
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), "0")


class RelativeLocationTests(TusTestCase):
    overrides = {"tus.relative_location": True}

    @defer.inlineCallbacks
    def test_relativeLocation(self) -> Any:
        r = yield self.create(5)
        self.assertRegex(h(r, "location"), r"^/files/[0-9a-f]{32}$")


class ProxyTests(TusTestCase):
    overrides = {"network.trust_proxy": True}

    @defer.inlineCallbacks
    def test_forwarded(self) -> Any:
        r = yield self.create(5, {"Forwarded": 'for=1.2.3.4;proto=https;host="up.example.com", for=5.6.7.8'})
        self.assertRegex(h(r, "location"), r"^https://up\.example\.com/files/[0-9a-f]{32}$")

    @defer.inlineCallbacks
    def test_xForwarded(self) -> Any:
        r = yield self.create(5, {"X-Forwarded-Host": "up.example.com:8443", "X-Forwarded-Proto": "https",
                                  "X-Forwarded-Prefix": "/api"})
        self.assertRegex(h(r, "location"), r"^https://up\.example\.com:8443/api/files/[0-9a-f]{32}$")

    @defer.inlineCallbacks
    def test_hostileForwardedHostIgnored(self) -> Any:
        r = yield self.create(5, {"X-Forwarded-Host": "evil.example/path?x", "X-Forwarded-Proto": "javascript"})
        self.assertTrue(h(r, "location").startswith(self.base + "/files/"), h(r, "location"))


class DeferredLengthTests(TusTestCase):
    @defer.inlineCallbacks
    def test_lengthSetByLaterPatch(self) -> Any:
        uploadId = yield self.createId(None, {"Upload-Defer-Length": "1"})
        r = yield self.head(uploadId)
        self.assertEqual((h(r, "upload-defer-length"), h(r, "upload-length")), ("1", None))
        r = yield self.patch(uploadId, 0, b"abc")
        self.assertEqual((r.code, h(r, "upload-offset")), (204, "3"))
        r = yield self.patch(uploadId, 3, b"def", {"Upload-Length": "6"})
        self.assertEqual((r.code, h(r, "upload-offset")), (204, "6"))
        r = yield self.head(uploadId)
        self.assertEqual((h(r, "upload-length"), h(r, "upload-defer-length")), ("6", None))
        self.assertEqual(self.store.get(uploadId).state, "complete")
        self.assertEqual(self.dataOf(uploadId), b"abcdef")

    @defer.inlineCallbacks
    def test_lengthCannotChangeOrFallBelowOffset(self) -> Any:
        uploadId = yield self.createId(None, {"Upload-Defer-Length": "1"})
        yield self.patch(uploadId, 0, b"abcd")
        r = yield self.patch(uploadId, 4, b"", {"Upload-Length": "3"})
        self.assertEqual(r.code, 400)
        r = yield self.patch(uploadId, 4, b"", {"Upload-Length": "10"})
        self.assertEqual(r.code, 204)
        r = yield self.patch(uploadId, 4, b"", {"Upload-Length": "11"})
        self.assertEqual(r.code, 400)
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-length"), "10")


class ExpirationTests(TusTestCase):
    overrides = {"janitor.expire_after": "1h"}

    @defer.inlineCallbacks
    def test_expiresAnnouncedInHttpDateFormat(self) -> Any:
        r = yield self.create(10)
        expires = h(r, "upload-expires")
        self.assertRegex(expires, r"^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$")
        uploadId = h(r, "location").rsplit("/", 1)[1]
        r = yield self.patch(uploadId, 0, b"abc")
        self.assertIsNotNone(h(r, "upload-expires"))
        r = yield self.head(uploadId)
        self.assertIsNotNone(h(r, "upload-expires"))

    @defer.inlineCallbacks
    def test_expiredUploadIs410(self) -> Any:
        uploadId = yield self.createId(10)
        self.store.clock = lambda: 9e12  # far in the future
        r = yield self.head(uploadId)
        self.assertEqual(r.code, 410)
        self.assertIsNone(h(r, "upload-offset"))
        r = yield self.patch(uploadId, 0, b"abc")
        self.assertEqual(r.code, 410)


class ChecksumTests(TusTestCase):
    @defer.inlineCallbacks
    def test_everyAlgorithmAccepted(self) -> Any:
        data = randomBytes(150 * 1024)
        uploadId = yield self.createId(len(data) * 4)
        offset = 0
        for name in ("sha1", "md5", "sha256", "sha512"):
            digest = base64.b64encode(hashlib.new(name, data).digest()).decode()
            r = yield self.patch(uploadId, offset, data, {"Upload-Checksum": f"{name} {digest}"})
            offset += len(data)
            self.assertEqual((r.code, h(r, "upload-offset")), (204, str(offset)), name)

    @defer.inlineCallbacks
    def test_mismatchIs460AndKeepsNothing(self) -> Any:
        uploadId = yield self.createId(10)
        yield self.patch(uploadId, 0, b"abc")
        digest = base64.b64encode(hashlib.sha256(b"something else").digest()).decode()
        r = yield self.patch(uploadId, 3, b"defg", {"Upload-Checksum": f"sha256 {digest}"})
        self.assertEqual(r.code, 460)
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), "3")

    @defer.inlineCallbacks
    def test_unknownAlgorithmIs400(self) -> Any:
        uploadId = yield self.createId(10)
        r = yield self.patch(uploadId, 0, b"abc", {"Upload-Checksum": "crc32 AAAA"})
        self.assertEqual(r.code, 400)
        r = yield self.patch(uploadId, 0, b"abc", {"Upload-Checksum": "sha1 not-base64!"})
        self.assertEqual(r.code, 400)
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), "0")

    def _chunkedPatch(self, uploadId: str, body: bytes, trailer: bytes) -> bytes:
        return (
            f"PATCH /files/{uploadId} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
            "Transfer-Encoding: chunked\r\nTrailer: Upload-Checksum\r\nConnection: close\r\n\r\n"
        ).encode() + b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(body), body, trailer)

    @defer.inlineCallbacks
    def test_checksumTrailer(self) -> Any:
        data = randomBytes(70000)
        uploadId = yield self.createId(len(data))
        good = base64.b64encode(hashlib.md5(data).digest())
        bad = base64.b64encode(hashlib.md5(b"x").digest())
        raw = yield rawRequest(self.port.getHost().port,
                               self._chunkedPatch(uploadId, data, b"Upload-Checksum: md5 " + bad + b"\r\n"))
        self.assertEqual(parseResponse(raw)[0], 460)
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), "0")
        raw = yield rawRequest(self.port.getHost().port,
                               self._chunkedPatch(uploadId, data, b"Upload-Checksum: md5 " + good + b"\r\n"))
        status, headers, _ = parseResponse(raw)
        self.assertEqual((status, headers["upload-offset"]), (204, str(len(data))))
        self.assertEqual(self.dataOf(uploadId), data)


class TerminationTests(TusTestCase):
    @defer.inlineCallbacks
    def test_deleteThenGone(self) -> Any:
        uploadId = yield self.createId(10)
        yield self.patch(uploadId, 0, b"abc")
        r = yield self.client.delete(self.url(f"/files/{uploadId}"), headers=TUS)
        yield r.content()
        self.assertEqual((r.code, h(r, "tus-resumable")), (204, "1.0.0"))
        self.assertFalse(os.path.exists(self.store.dataPath(uploadId)))
        r = yield self.head(uploadId)
        self.assertEqual(r.code, 410)
        r = yield self.patch(uploadId, 3, b"abc")
        self.assertEqual(r.code, 410)
        r = yield self.client.delete(self.url(f"/files/{uploadId}"), headers=TUS)
        yield r.content()
        self.assertEqual(r.code, 410)

    @defer.inlineCallbacks
    def test_deleteUnknownIs404(self) -> Any:
        r = yield self.client.delete(self.url("/files/" + "a" * 32), headers=TUS)
        yield r.content()
        self.assertEqual(r.code, 404)

    @defer.inlineCallbacks
    def test_deleteNeedsVersion(self) -> Any:
        uploadId = yield self.createId(10)
        r = yield self.client.delete(self.url(f"/files/{uploadId}"))
        yield r.content()
        self.assertEqual(r.code, 412)
        self.assertTrue(os.path.exists(self.store.dataPath(uploadId)))


class ConcatenationTests(TusTestCase):
    @defer.inlineCallbacks
    def partial(self, data: bytes, upload: bool = True) -> Any:
        uploadId = yield self.createId(len(data), {"Upload-Concat": "partial"})
        if upload:
            r = yield self.patch(uploadId, 0, data)
            self.assertEqual(r.code, 204)
        return uploadId

    @defer.inlineCallbacks
    def test_finalOfFinishedPartials(self) -> Any:
        a, b = randomBytes(100000), randomBytes(50001)
        pa = yield self.partial(a)
        pb = yield self.partial(b)
        r = yield self.head(pa)
        self.assertEqual(h(r, "upload-concat"), "partial")
        concat = f"final;{self.base}/files/{pa} /files/{pb} /files/{pa}"
        final = yield self.createId(None, {"Upload-Concat": concat})
        r = yield self.head(final)
        self.assertEqual((h(r, "upload-offset"), h(r, "upload-length")), (str(2 * len(a) + len(b)),) * 2)
        self.assertEqual(h(r, "upload-concat"), f"final;/files/{pa} /files/{pb} /files/{pa}")
        self.assertEqual(self.dataOf(final), a + b + a)
        r = yield self.patch(final, 0, b"x")
        self.assertEqual(r.code, 403)

    @defer.inlineCallbacks
    def test_finalOfUnfinishedPartials(self) -> Any:
        a, b = randomBytes(1000), randomBytes(2000)
        pa = yield self.partial(a)
        pb = yield self.partial(b, upload=False)
        final = yield self.createId(None, {"Upload-Concat": f"final;/files/{pa} /files/{pb}"})
        r = yield self.head(final)
        self.assertEqual((r.code, h(r, "upload-offset"), h(r, "upload-length")), (200, None, "3000"))
        yield self.patch(pb, 0, b)
        r = yield self.head(final)
        self.assertEqual(h(r, "upload-offset"), "3000")
        self.assertEqual(self.dataOf(final), a + b)

    @defer.inlineCallbacks
    def test_invalidFinals(self) -> Any:
        normal = yield self.createId(3)
        pa = yield self.partial(b"abc")
        for concat in (f"final;/files/{normal}", "final;", f"final;/elsewhere/{pa}",
                       f"final;/files/{'0' * 32}", "final;/files/../../etc/passwd", "bogus"):
            r = yield self.create(None, {"Upload-Concat": concat})
            self.assertEqual(r.code, 400, concat)
        r = yield self.create(3, {"Upload-Concat": f"final;/files/{pa}"})
        self.assertEqual(r.code, 400)


class DownloadTests(TusTestCase):
    @defer.inlineCallbacks
    def test_rangesAndNames(self) -> Any:
        data = randomBytes(5000)
        meta = f"filename {b64('../x/ré port.pdf')},filetype {b64('application/pdf')}"
        uploadId = yield self.createId(len(data), {"Upload-Metadata": meta})
        r = yield self.client.get(self.url(f"/files/{uploadId}"))
        yield r.content()
        self.assertEqual(r.code, 409)
        yield self.patch(uploadId, 0, data)
        r = yield self.client.get(self.url(f"/files/{uploadId}"), headers={"Range": "bytes=100-199"})
        body = yield r.content()
        self.assertEqual((r.code, body), (206, data[100:200]))
        self.assertEqual(h(r, "content-type"), "application/pdf")
        self.assertEqual(h(r, "content-disposition"),
                         "attachment; filename=\"r? port.pdf\"; filename*=UTF-8''r%C3%A9%20port.pdf")

    @defer.inlineCallbacks
    def test_hostileTypeFallsBack(self) -> Any:
        uploadId = yield self.createId(1, {"Upload-Metadata": f"filetype {b64('text/html; x<script>')}"})
        yield self.patch(uploadId, 0, b"x")
        r = yield self.client.get(self.url(f"/files/{uploadId}"))
        yield r.content()
        self.assertEqual(h(r, "content-type"), "application/octet-stream")
        self.assertEqual(h(r, "content-disposition"), "attachment")

    @defer.inlineCallbacks
    def test_dotNamesAndTypesAreNotPassedOn(self) -> Any:
        # ".." is no file name, "../.." no media type: neither reaches the headers.
        for name, filetype in (("..", "../.."), ("../..", "./x"), (".hidden", "-/-")):
            meta = f"filename {b64(name)},filetype {b64(filetype)}"
            uploadId = yield self.createId(1, {"Upload-Metadata": meta})
            yield self.patch(uploadId, 0, b"x")
            r = yield self.client.get(self.url(f"/files/{uploadId}"))
            yield r.content()
            self.assertEqual(h(r, "content-type"), "application/octet-stream", filetype)
            disposition = h(r, "content-disposition")
            self.assertIn(disposition, ("attachment", "attachment; filename=\"hidden\"; filename*=UTF-8''hidden"),
                          name)


class CorsTests(TusTestCase):
    overrides = {"cors.allowed_origins": ["https://app.example.com"]}

    @defer.inlineCallbacks
    def test_allowedOrigin(self) -> Any:
        r = yield self.create(3, {"Origin": "https://app.example.com"})
        self.assertEqual(h(r, "access-control-allow-origin"), "https://app.example.com")
        for name in ("Location", "Upload-Offset", "Tus-Resumable", "Upload-Expires"):
            self.assertIn(name, h(r, "access-control-expose-headers"))

    @defer.inlineCallbacks
    def test_otherOriginGetsNothing(self) -> Any:
        r = yield self.create(3, {"Origin": "https://evil.example.com"})
        self.assertIsNone(h(r, "access-control-allow-origin"))

    @defer.inlineCallbacks
    def test_preflight(self) -> Any:
        uploadId = yield self.createId(3)
        r = yield self.client.request("OPTIONS", self.url(f"/files/{uploadId}"), headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "tus-resumable, upload-offset, content-type"})
        yield r.content()
        self.assertEqual(r.code, 200)
        self.assertIn("PATCH", h(r, "access-control-allow-methods"))
        self.assertEqual(h(r, "access-control-allow-headers"), "tus-resumable, upload-offset, content-type")
        self.assertEqual(h(r, "access-control-max-age"), "86400")


class OtherProtocolTests(TusTestCase):
    @defer.inlineCallbacks
    def test_uploadsOfOtherProtocolsAreNotTusUploads(self) -> Any:
        record = yield self.store.create("resumable", 3, None)
        r = yield self.head(record.id)
        self.assertEqual(r.code, 404)
        r = yield self.patch(record.id, 0, b"abc")
        self.assertEqual(r.code, 404)
        r = yield self.client.get(self.url(f"/files/{record.id}"))
        yield r.content()
        self.assertEqual(r.code, 404)
        r = yield self.client.delete(self.url(f"/files/{record.id}"), headers=TUS)
        yield r.content()
        self.assertEqual(r.code, 404)
        self.assertEqual(self.store.get(record.id).state, "active")


class StaleRecordTests(TusTestCase):
    """
    A shared file system that keeps answering ESTALE for a record: the
    client gets a one-line 500, never a traceback, and the log one line.
    """

    @defer.inlineCallbacks
    def test_aRecordThatStaysStaleIsA500WithAReason(self) -> Any:
        import errno

        from chunkd.store import UploadStore

        uploadId = yield self.createId(5)

        def stale(store: UploadStore, upload: str) -> Any:
            raise OSError(errno.ESTALE, "Stale file handle")

        # (TusTestCase.patch sends a PATCH: monkey-patch by hand.)
        real = UploadStore.get
        UploadStore.get = stale  # type: ignore[method-assign]
        self.addCleanup(setattr, UploadStore, "get", real)
        r = yield self.head(uploadId)
        self.assertEqual(r.code, 500)
        r = yield self.patch(uploadId, 0, b"hello")
        body = yield r.content()
        self.assertEqual((r.code, body), (500, b"reading the upload failed\n"))
        self.assertEqual(self.flushLoggedErrors(), [])
