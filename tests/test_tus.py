"""
tus 1.0.0 over a real socket: every rule has a test that breaks it.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any, Dict, Optional

from twisted.internet import defer

from tests.helpers import ServerTestCase, deferLater, parseResponse, randomBytes, rawRequest

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


class TusTestCase(ServerTestCase):
    @defer.inlineCallbacks
    def create(self, length: Optional[int] = None, headers: Optional[Dict[str, str]] = None, **kw: Any) -> Any:
        h = dict(TUS)
        if length is not None:
            h["Upload-Length"] = str(length)
        h.update(headers or {})
        response = yield self.client.post(self.url("/files/"), headers=h, **kw)
        yield response.content()
        return response

    @defer.inlineCallbacks
    def createId(self, length: Optional[int] = None, headers: Optional[Dict[str, str]] = None) -> Any:
        response = yield self.create(length, headers)
        self.assertEqual(response.code, 201)
        location = response.headers.getRawHeaders("location")[0]
        return location.rsplit("/", 1)[1]

    @defer.inlineCallbacks
    def patch(self, uploadId: str, offset: int, body: bytes, headers: Optional[Dict[str, str]] = None) -> Any:
        h = dict(TUS, **{"Upload-Offset": str(offset), "Content-Type": OCTETS})
        h.update(headers or {})
        response = yield self.client.patch(self.url(f"/files/{uploadId}"), data=body, headers=h)
        text = yield response.content()
        response.text_ = text
        return response

    @defer.inlineCallbacks
    def head(self, uploadId: str, headers: Optional[Dict[str, str]] = None) -> Any:
        h = dict(TUS)
        h.update(headers or {})
        response = yield self.client.head(self.url(f"/files/{uploadId}"), headers=h)
        yield response.content()
        return response


def h(response: Any, name: str) -> Optional[str]:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


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
