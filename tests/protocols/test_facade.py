"""
The chunked-upload facade over a real socket: creation, raw and multipart
PATCH, finalize with its sha256 and tokens, hostile file names, a restart
between the last chunk and finalize, and /health.
"""

from __future__ import annotations

import hashlib
import io
import errno
import json
import os
import shutil
import threading
import time
from typing import Any, Dict, List, Optional

from twisted.internet import defer

from chunkd import hashes as hashesModule
from chunkd.protocols.facade import FacadeProtocol
from chunkd.tokens import mintToken
from tests.helpers import (
    BOUNDARY,
    OCTETS,
    ServerTestCase,
    deferLater,
    h,
    multipartBody,
    parseResponse,
    randomBytes,
    rawRequest,
    requireTuspy,
    tuspyUploader,
)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FacadeTestCase(ServerTestCase):
    mount = "/uploads"

    def facade(self) -> FacadeProtocol:
        """
        The running facade, for the few facts no HTTP answer shows.
        """
        owner = self.site.routes.protocols.get("facade")
        if isinstance(owner, FacadeProtocol):
            return owner
        raise AssertionError("no facade mounted")

    @defer.inlineCallbacks
    def request(self, method: str, path: str, **kw: Any) -> Any:
        response = yield self.client.request(method, self.url(path), **kw)
        response.body_ = yield response.content()
        return response

    @defer.inlineCallbacks
    def create(self, length: Optional[int], headers: Optional[Dict[str, str]] = None) -> Any:
        h_ = {} if length is None else {"Upload-Length": str(length)}
        h_.update(headers or {})
        response = yield self.request("POST", self.mount, headers=h_)
        return response

    @defer.inlineCallbacks
    def createUpload(self, length: int) -> Any:
        """
        @return: C{(uploadId, token)}.
        """
        r = yield self.create(length, {"Tus-Resumable": "1.0.0"})
        self.assertEqual(r.code, 201, r.body_)
        location = h(r, "location")
        prefix = self.mount + "/"
        self.assertTrue(location.startswith(prefix), location)
        return location[len(prefix):], h(r, "upload-token")

    @defer.inlineCallbacks
    def patchRaw(self, uploadId: str, offset: int, data: bytes,
                 headers: Optional[Dict[str, str]] = None) -> Any:
        h_ = {"Upload-Offset": str(offset), "Content-Type": OCTETS, "Tus-Resumable": "1.0.0"}
        h_.update(headers or {})
        response = yield self.request("PATCH", f"{self.mount}/{uploadId}", data=data, headers=h_)
        return response

    @defer.inlineCallbacks
    def patchMultipart(self, uploadId: str, offset: int, data: bytes,
                       fields: Optional[Dict[str, str]] = None, body: Optional[bytes] = None,
                       headers: Optional[Dict[str, str]] = None) -> Any:
        h_ = {"Upload-Offset": str(offset),
              "Content-Type": f"multipart/form-data; boundary={BOUNDARY.decode()}"}
        h_.update(headers or {})
        if body is None:
            body = multipartBody(data, fields)
        response = yield self.request("PATCH", f"{self.mount}/{uploadId}", data=body, headers=h_)
        return response

    @defer.inlineCallbacks
    def head(self, uploadId: str, headers: Optional[Dict[str, str]] = None) -> Any:
        response = yield self.request("HEAD", f"{self.mount}/{uploadId}", headers=headers or {})
        return response

    @defer.inlineCallbacks
    def finalize(self, uploadId: Optional[str], filename: Optional[str] = "video.mp4",
                 token: Optional[str] = None, headerToken: Optional[str] = None,
                 body: Optional[bytes] = None) -> Any:
        if body is None:
            payload: Dict[str, Any] = {}
            if uploadId is not None:
                payload["uploadId"] = uploadId
            if filename is not None:
                payload["filename"] = filename
            if token is not None:
                payload["uploadToken"] = token
            body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if headerToken is not None:
            headers["X-Upload-Token"] = headerToken
        response = yield self.request("POST", f"{self.mount}/finalize", data=body, headers=headers)
        return response

    @defer.inlineCallbacks
    def upload(self, data: bytes, chunk: int = 64 * 1024, multipart: bool = False) -> Any:
        """
        Create an upload and send C{data} in chunks; return C{(id, token)}.
        """
        uploadId, token = yield self.createUpload(len(data))
        for offset in range(0, len(data), chunk):
            piece = data[offset:offset + chunk]
            send = self.patchMultipart if multipart else self.patchRaw
            r = yield send(uploadId, offset, piece)
            self.assertEqual((r.code, h(r, "upload-offset")), (204, str(offset + len(piece))), r.body_)
        return uploadId, token

    def completeDir(self) -> str:
        return os.path.join(self.storage, "complete")

    def completeFiles(self) -> List[str]:
        """What the completed area holds (it is made on first use)."""
        if not os.path.isdir(self.completeDir()):
            return []
        return sorted(os.listdir(self.completeDir()))

    def published(self, uploadId: str) -> str:
        return self.store.get(uploadId).published.path

    def offsetOf(self, uploadId: str) -> int:
        return self.store.get(uploadId).offset

    @defer.inlineCallbacks
    def restart(self, overrides: Optional[Dict[str, object]] = None) -> Any:
        """
        Stop answering on this server and start a fresh Site, store and
        facade on the same storage directory: nothing in memory survives.
        (The first disk pool is stopped by its own cleanup.)
        """
        yield self.port.stopListening()
        yield self.pool.closeCachedConnections()
        yield self.startServer(dict(overrides if overrides is not None else self.overrides))


class CreationTests(FacadeTestCase):
    @defer.inlineCallbacks
    def test_createIs201WithLocationTusResumableAndToken(self) -> Any:
        r = yield self.create(1000)
        self.assertEqual(r.code, 201)
        location = h(r, "location")
        self.assertRegex(location, r"^/uploads/[0-9a-f]{32}$")
        self.assertEqual(h(r, "tus-resumable"), "1.0.0")
        self.assertGreaterEqual(len(h(r, "upload-token")), 40)
        self.assertIsNotNone(h(r, "upload-expires"))
        uploadId = location.rsplit("/", 1)[1]
        record = self.store.get(uploadId)
        self.assertEqual((record.protocol, record.length, record.offset), ("facade", 1000, 0))
        # Only a hash of the token is stored.
        self.assertNotIn(h(r, "upload-token"), json.dumps(record.extra))
        r = yield self.head(uploadId)
        self.assertEqual((r.code, h(r, "upload-offset"), h(r, "upload-length")), (200, "0", "1000"))
        self.assertEqual(h(r, "cache-control"), "no-store")

    @defer.inlineCallbacks
    def test_createNeedsUploadLength(self) -> Any:
        r = yield self.create(None)
        self.assertEqual(r.code, 400)
        self.assertIn(b"Upload-Length", r.body_)
        r = yield self.create(None, {"Upload-Length": "-5"})
        self.assertEqual(r.code, 400)
        self.assertEqual(os.listdir(self.store.uploads), [])

    @defer.inlineCallbacks
    def test_otherTusVersionIs412(self) -> Any:
        r = yield self.create(10, {"Tus-Resumable": "0.2.2"})
        self.assertEqual((r.code, h(r, "tus-version")), (412, "1.0.0"))

    @defer.inlineCallbacks
    def test_metadataIsKeptAndEchoed(self) -> Any:
        r = yield self.create(10, {"Upload-Metadata": "filename dmlkZW8ubXA0"})
        uploadId = h(r, "location").rsplit("/", 1)[1]
        self.assertEqual(self.store.get(uploadId).metadata, {"filename": "video.mp4"})
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-metadata"), "filename dmlkZW8ubXA0")

    @defer.inlineCallbacks
    def test_emptyUploadIsCompleteAtOnce(self) -> Any:
        uploadId, token = yield self.createUpload(0)
        r = yield self.finalize(uploadId, "empty.bin", token)
        self.assertEqual(json.loads(r.body_), {"videoId": uploadId, "status": "complete", "size": 0,
                                               "checksum": sha256(b"")})


class MaxSizeTests(FacadeTestCase):
    overrides = {"limits.max_size": 1000}

    @defer.inlineCallbacks
    def test_lengthAboveMaxSizeIs413(self) -> Any:
        r = yield self.create(1001)
        self.assertEqual(r.code, 413)
        r = yield self.create(1000)
        self.assertEqual(r.code, 201)


class PatchTests(FacadeTestCase):
    @defer.inlineCallbacks
    def test_rawSequence(self) -> Any:
        data = randomBytes(200 * 1024)
        uploadId, _ = yield self.createUpload(len(data))
        for offset, end in ((0, 1), (1, 70000), (70000, len(data))):
            r = yield self.patchRaw(uploadId, offset, data[offset:end])
            self.assertEqual((r.code, h(r, "upload-offset"), h(r, "tus-resumable")),
                             (204, str(end), "1.0.0"))
            r = yield self.head(uploadId)
            self.assertEqual(h(r, "upload-offset"), str(end))
        self.assertEqual(self.dataOf(uploadId), data)
        # Every byte is here, but the upload is finished only by finalize.
        record = self.store.get(uploadId)
        self.assertEqual((record.offset, record.state), (len(data), "active"))

    @defer.inlineCallbacks
    def test_plainOctetStreamIsRawToo(self) -> Any:
        uploadId, _ = yield self.createUpload(3)
        r = yield self.patchRaw(uploadId, 0, b"abc", {"Content-Type": "application/octet-stream"})
        self.assertEqual((r.code, h(r, "upload-offset")), (204, "3"))

    @defer.inlineCallbacks
    def test_multipartSequence(self) -> Any:
        data = randomBytes(300 * 1024)
        uploadId, _ = yield self.createUpload(len(data))
        r = yield self.patchMultipart(uploadId, 0, data[:100000], fields={"note": "first"})
        self.assertEqual((r.code, h(r, "upload-offset")), (204, "100000"))
        r = yield self.patchMultipart(uploadId, 100000, data[100000:250000])
        self.assertEqual((r.code, h(r, "upload-offset")), (204, "250000"))
        # treq's own multipart encoder, as a real client library sends it.
        r = yield self.client.patch(
            self.url(f"/uploads/{uploadId}"), headers={"Upload-Offset": "250000"},
            files={"chunk": ("blob", "application/octet-stream", io.BytesIO(data[250000:]))})
        yield r.content()
        self.assertEqual((r.code, h(r, "upload-offset")), (204, str(len(data))))
        self.assertEqual(self.dataOf(uploadId), data)

    @defer.inlineCallbacks
    def test_mixedRawThenMultipartThenFinalize(self) -> Any:
        data = randomBytes(180 * 1024)
        uploadId, token = yield self.createUpload(len(data))
        r = yield self.patchRaw(uploadId, 0, data[:60000])
        self.assertEqual(r.code, 204)
        r = yield self.patchMultipart(uploadId, 60000, data[60000:120000])
        self.assertEqual(r.code, 204)
        r = yield self.patchRaw(uploadId, 120000, data[120000:])
        self.assertEqual((r.code, h(r, "upload-offset")), (204, str(len(data))))
        r = yield self.finalize(uploadId, "mixed.mp4", token)
        self.assertEqual(r.code, 200, r.body_)
        self.assertEqual(json.loads(r.body_)["checksum"], sha256(data))
        self.assertEqual(self.facade().recomputed, 0)

    @defer.inlineCallbacks
    def test_wrongOffsetIs409WithCurrentOffset(self) -> Any:
        uploadId, _ = yield self.createUpload(100)
        yield self.patchRaw(uploadId, 0, b"a" * 10)
        for send in (self.patchRaw, self.patchMultipart):
            for offset in (0, 5, 20):
                r = yield send(uploadId, offset, b"b" * 10)
                self.assertEqual((r.code, h(r, "upload-offset")), (409, "10"))
                self.assertIn(b"at 10", r.body_)
        self.assertEqual(self.offsetOf(uploadId), 10)
        self.assertEqual(self.dataOf(uploadId)[:10], b"a" * 10)

    @defer.inlineCallbacks
    def test_unknownIdIs404(self) -> Any:
        for uploadId in ("0" * 32, "not-an-id", "finalize", "..%2F..%2Fetc"):
            # Not found, or (a path with slashes once decoded) no such route.
            r = yield self.patchRaw(uploadId, 0, b"abc")
            self.assertIn(r.code, (404, 405), uploadId)
            r = yield self.patchMultipart(uploadId, 0, b"abc")
            self.assertIn(r.code, (404, 405), uploadId)
            r = yield self.head(uploadId)
            self.assertIn(r.code, (404, 405), uploadId)
            self.assertIsNone(h(r, "upload-offset"))

    @defer.inlineCallbacks
    def test_tusUploadsAreNotFacadeUploads(self) -> Any:
        r = yield self.request("POST", "/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "3"})
        uploadId = h(r, "location").rsplit("/", 1)[1]
        r = yield self.patchRaw(uploadId, 0, b"abc")
        self.assertEqual(r.code, 404)
        r = yield self.finalize(uploadId, "x", "token")
        self.assertEqual(r.code, 404)

    @defer.inlineCallbacks
    def test_otherContentTypeIs415(self) -> Any:
        uploadId, _ = yield self.createUpload(10)
        for contentType in ("text/plain", "application/json"):
            r = yield self.patchRaw(uploadId, 0, b"abc", {"Content-Type": contentType})
            self.assertEqual(r.code, 415)
        self.assertEqual(self.offsetOf(uploadId), 0)

    @defer.inlineCallbacks
    def test_missingOffsetIs400(self) -> Any:
        uploadId, _ = yield self.createUpload(10)
        r = yield self.request("PATCH", f"/uploads/{uploadId}", data=b"abc",
                               headers={"Content-Type": OCTETS})
        self.assertEqual(r.code, 400)
        self.assertIn(b"Upload-Offset", r.body_)

    @defer.inlineCallbacks
    def test_chunkPastUploadLengthIs413AndKeepsNothing(self) -> Any:
        uploadId, _ = yield self.createUpload(10)
        r = yield self.patchRaw(uploadId, 0, b"x" * 11)
        self.assertEqual(r.code, 413)
        r = yield self.patchMultipart(uploadId, 0, b"x" * 11)
        self.assertEqual(r.code, 413)
        self.assertEqual(self.offsetOf(uploadId), 0)
        r = yield self.patchRaw(uploadId, 0, b"x" * 10)
        self.assertEqual(r.code, 204)

    @defer.inlineCallbacks
    def test_multipartWithoutChunkPartIs400AndReleasesTheUpload(self) -> Any:
        uploadId, _ = yield self.createUpload(10)
        r = yield self.patchMultipart(uploadId, 0, b"abc", body=multipartBody(b"abc", name="file"))
        self.assertEqual(r.code, 400)
        self.assertIn(b"chunk", r.body_)
        # The lock was let go: the next chunk is not answered 423.
        r = yield self.patchMultipart(uploadId, 0, b"abc")
        self.assertEqual((r.code, h(r, "upload-offset")), (204, "3"))

    @defer.inlineCallbacks
    def test_truncatedMultipartKeepsNothing(self) -> Any:
        uploadId, token = yield self.createUpload(20)
        body = multipartBody(b"0123456789")
        cut = body[: body.index(b"0123456789") + 6]  # the body ends inside the chunk
        r = yield self.patchMultipart(uploadId, 0, b"", body=cut)
        self.assertEqual(r.code, 400)
        self.assertEqual(self.offsetOf(uploadId), 0)
        data = randomBytes(20)
        r = yield self.patchMultipart(uploadId, 0, data)
        self.assertEqual(r.code, 204)
        r = yield self.finalize(uploadId, "t.bin", token)
        self.assertEqual(json.loads(r.body_)["checksum"], sha256(data))

    @defer.inlineCallbacks
    def test_droppedConnectionKeepsLandedBytesAndTheHashStaysInStep(self) -> Any:
        data = randomBytes(512 * 1024)
        uploadId, token = yield self.createUpload(len(data))
        sent = 300 * 1024
        head = (f"PATCH /uploads/{uploadId} HTTP/1.1\r\nHost: x\r\nUpload-Offset: 0\r\n"
                f"Content-Type: {OCTETS}\r\nContent-Length: {len(data)}\r\n\r\n").encode()
        yield rawRequest(self.port.getHost().port, head + data[:sent], closeAfter=0.3)
        for _ in range(50):
            if self.offsetOf(uploadId):
                break
            yield deferLater(0.05)
        self.assertEqual(self.offsetOf(uploadId), sent)
        r = yield self.patchRaw(uploadId, sent, data[sent:])
        self.assertEqual(r.code, 204)
        r = yield self.finalize(uploadId, "cut.bin", token)
        self.assertEqual(json.loads(r.body_)["checksum"], sha256(data))
        self.assertEqual(self.facade().recomputed, 0)

    @defer.inlineCallbacks
    def test_uploadChecksumIsVerified(self) -> Any:
        import base64

        data = randomBytes(3000)
        uploadId, token = yield self.createUpload(len(data))

        def checksum(piece: bytes, algorithm: str = "sha1") -> Dict[str, str]:
            value = base64.b64encode(hashlib.new(algorithm, piece).digest()).decode()
            return {"Upload-Checksum": f"{algorithm} {value}"}

        r = yield self.patchRaw(uploadId, 0, data[:1000], checksum(data[:1000]))
        self.assertEqual(r.code, 204)
        r = yield self.patchMultipart(uploadId, 1000, data[1000:2000], headers=checksum(b"other"))
        self.assertEqual(r.code, 460)
        r = yield self.patchRaw(uploadId, 1000, data[1000:2000], checksum(b"other", "md5"))
        self.assertEqual(r.code, 460)
        r = yield self.patchRaw(uploadId, 1000, data[1000:2000], {"Upload-Checksum": "crc99 AAAA"})
        self.assertEqual(r.code, 400)
        self.assertEqual(self.offsetOf(uploadId), 1000)
        r = yield self.patchMultipart(uploadId, 1000, data[1000:], headers=checksum(data[1000:], "sha256"))
        self.assertEqual(r.code, 204)
        # The refused chunks never entered the running hash.
        r = yield self.finalize(uploadId, "c.bin", token)
        self.assertEqual(json.loads(r.body_)["checksum"], sha256(data))
        self.assertEqual(self.facade().recomputed, 0)

    @defer.inlineCallbacks
    def test_patchAfterFinalizeIs410(self) -> Any:
        uploadId, token = yield self.upload(b"abc")
        yield self.finalize(uploadId, "a.txt", token)
        r = yield self.patchRaw(uploadId, 3, b"")
        self.assertEqual(r.code, 410)
        r = yield self.head(uploadId)
        self.assertEqual((r.code, h(r, "upload-offset")), (200, "3"))


class OversizedChunkTests(FacadeTestCase):
    overrides = {"uploads.max_chunk_size": 1024}

    @defer.inlineCallbacks
    def test_chunkOfExactlyTheLimitIsFine(self) -> Any:
        uploadId, _ = yield self.createUpload(4096)
        r = yield self.patchRaw(uploadId, 0, b"a" * 1024)
        self.assertEqual(r.code, 204)
        r = yield self.patchMultipart(uploadId, 1024, b"b" * 1024)
        self.assertEqual((r.code, h(r, "upload-offset")), (204, "2048"))

    @defer.inlineCallbacks
    def test_contentLengthOverTheLimitIs413(self) -> Any:
        uploadId, _ = yield self.createUpload(4096)
        r = yield self.patchRaw(uploadId, 0, b"a" * 1025)
        self.assertEqual(r.code, 413)
        self.assertIn(b"1024", r.body_)
        body = multipartBody(b"a" * 1024) + b"x" * (64 * 1024)
        r = yield self.patchMultipart(uploadId, 0, b"", body=body)
        self.assertEqual(r.code, 413)
        self.assertEqual(self.offsetOf(uploadId), 0)

    @defer.inlineCallbacks
    def test_multipartChunkOverTheLimitIs413(self) -> Any:
        # The body's length is within the allowance; the chunk's bytes are not.
        uploadId, _ = yield self.createUpload(4096)
        r = yield self.patchMultipart(uploadId, 0, b"a" * 1025)
        self.assertEqual(r.code, 413)
        self.assertEqual(self.offsetOf(uploadId), 0)

    @defer.inlineCallbacks
    def test_chunkedBodyOverTheLimitIsCountedAnd413(self) -> Any:
        uploadId, token = yield self.createUpload(4096)
        pieces = [b"c" * 600, b"d" * 600]
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        head = (f"PATCH /uploads/{uploadId} HTTP/1.1\r\nHost: x\r\nUpload-Offset: 0\r\n"
                f"Content-Type: {OCTETS}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
        raw = yield rawRequest(self.port.getHost().port, head + body)
        status, _, _ = parseResponse(raw)
        self.assertEqual(status, 413)
        self.assertEqual(self.offsetOf(uploadId), 0)
        # Nothing of it entered the running hash either.
        data = randomBytes(4096)
        for offset in range(0, 4096, 1024):
            r = yield self.patchRaw(uploadId, offset, data[offset:offset + 1024])
            self.assertEqual(r.code, 204)
        r = yield self.finalize(uploadId, "c.bin", token)
        self.assertEqual(json.loads(r.body_)["checksum"], sha256(data))
        self.assertEqual(self.facade().recomputed, 0)


class FinalizeTests(FacadeTestCase):
    @defer.inlineCallbacks
    def test_finalizeAnswersWithTheStreamedSha256(self) -> Any:
        data = randomBytes(1024 * 1024 + 17)
        uploadId, token = yield self.upload(data, chunk=256 * 1024, multipart=True)
        r = yield self.finalize(uploadId, "clip.mp4", token)
        self.assertEqual(r.code, 200, r.body_)
        self.assertEqual(h(r, "content-type"), "application/json")
        self.assertEqual(json.loads(r.body_), {
            "videoId": uploadId, "status": "complete", "size": len(data), "checksum": sha256(data)})
        # Answered from the running hash: the file was not read again.
        self.assertEqual(self.facade().recomputed, 0)
        path = self.published(uploadId)
        self.assertEqual(path, os.path.join(self.completeDir(), "clip.mp4"))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), data)
        with open(path + ".json") as f:
            sidecar = json.load(f)
        self.assertEqual((sidecar["sha256"], sidecar["size"], sidecar["id"], sidecar["filename"]),
                         (hashlib.sha256(data).hexdigest(), len(data), uploadId, "clip.mp4"))
        # Moved, not copied.
        self.assertFalse(os.path.exists(self.store.dataPath(uploadId)))

    @defer.inlineCallbacks
    def test_finalizeBeforeCompletionIs409WithOffset(self) -> Any:
        uploadId, token = yield self.createUpload(10)
        yield self.patchRaw(uploadId, 0, b"abcd")
        r = yield self.finalize(uploadId, "early.bin", token)
        self.assertEqual((r.code, h(r, "upload-offset")), (409, "4"))
        self.assertIn(b"4 of 10", r.body_)
        self.assertEqual(self.completeFiles(), [])
        yield self.patchRaw(uploadId, 4, b"efghij")
        r = yield self.finalize(uploadId, "early.bin", token)
        self.assertEqual(r.code, 200)

    @defer.inlineCallbacks
    def test_repeatedFinalizeReturnsTheSameAnswer(self) -> Any:
        data = randomBytes(5000)
        uploadId, token = yield self.upload(data)
        first = yield self.finalize(uploadId, "once.mp4", token)
        again = yield self.finalize(uploadId, "other-name.mp4", headerToken=token)
        self.assertEqual((first.code, again.code), (200, 200))
        self.assertEqual(first.body_, again.body_)  # byte for byte
        self.assertEqual(list(json.loads(again.body_)), ["videoId", "status", "size", "checksum"])
        self.assertEqual(self.completeFiles(), ["once.mp4", "once.mp4.json"])

    @defer.inlineCallbacks
    def test_twoFinalizesAtOncePublishOnce(self) -> Any:
        # A client retrying a finalize it thinks was lost, while the first
        # is still running: one file, and every 200 says the same.
        data = randomBytes(2 * 1024 * 1024)
        uploadId, token = yield self.upload(data, chunk=1024 * 1024)
        self.facade().hashes.forget(uploadId)  # make finalize slow: it must rehash
        answers = yield defer.gatherResults(
            [self.finalize(uploadId, "twice.mp4", token) for _ in range(3)])
        codes = sorted(r.code for r in answers)
        self.assertIn(200, codes)
        self.assertTrue(set(codes) <= {200, 423}, codes)
        bodies = {r.body_ for r in answers if r.code == 200}
        self.assertEqual(len(bodies), 1)
        self.assertEqual(json.loads(bodies.pop())["checksum"], sha256(data))
        self.assertEqual(self.completeFiles(), ["twice.mp4", "twice.mp4.json"])
        r = yield self.finalize(uploadId, "twice.mp4", token)
        self.assertEqual(r.code, 200)

    @defer.inlineCallbacks
    def test_tokenInTheHeader(self) -> Any:
        uploadId, token = yield self.upload(b"hello")
        r = yield self.finalize(uploadId, "h.txt", headerToken=token)
        self.assertEqual(r.code, 200)

    @defer.inlineCallbacks
    def test_malformedRequestsAre400NamingTheField(self) -> Any:
        uploadId, token = yield self.upload(b"hello")
        cases = [
            (b"{not json", b"JSON"),
            (b"", b"JSON"),
            (b"[1, 2]", b"JSON object"),
            (b"\xff\xfe", b"JSON"),
            (json.dumps({"filename": "a", "uploadToken": token}).encode(), b"uploadId is missing"),
            (json.dumps({"uploadId": uploadId, "uploadToken": token}).encode(), b"filename is missing"),
            (json.dumps({"uploadId": 5, "filename": "a", "uploadToken": token}).encode(),
             b"uploadId must be a string"),
            (json.dumps({"uploadId": uploadId, "filename": None, "uploadToken": token}).encode(),
             b"filename must be a string"),
            (json.dumps({"uploadId": uploadId, "filename": "a", "uploadToken": 7}).encode(),
             b"uploadToken must be a string"),
        ]
        for body, reason in cases:
            r = yield self.finalize(None, body=body)
            self.assertEqual(r.code, 400, body)
            self.assertIn(reason, r.body_, body)
        self.assertEqual(self.completeFiles(), [])

    @defer.inlineCallbacks
    def test_deeplyNestedJSONIs400(self) -> Any:
        # 20,000 nested arrays fit the small-body limit and exhaust the
        # JSON decoder's recursion: a client error, not a 500.
        yield self.upload(b"hello")
        r = yield self.finalize(None, body=b"[" * 20000 + b"]" * 20000)
        self.assertEqual(r.code, 400, r.body_)
        self.assertEqual(r.body_, b"the body is nested too deeply\n")
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.completeFiles(), [])

    @defer.inlineCallbacks
    def test_unknownUploadIs404(self) -> Any:
        for uploadId in ("f" * 32, "../../etc/passwd", ""):
            r = yield self.finalize(uploadId, "x", "token")
            self.assertEqual(r.code, 404, uploadId)

    @defer.inlineCallbacks
    def test_hostileFilenamesStayInTheCompleteDirectory(self) -> Any:
        cases = [
            ("../../etc/passwd", "passwd"),
            ("/abs", "abs"),
            ("..\\..\\windows\\system.ini", "system.ini"),
            ("", None),
            ("..", None),
            ("a\x00b.mp4", "ab.mp4"),
            ("x" * 1000, None),
            ("\u00e9t\u00e9 <1>.mov", None),
        ]
        complete = os.path.realpath(self.completeDir())
        for filename, expected in cases:
            data = randomBytes(100)
            uploadId, token = yield self.upload(data)
            r = yield self.finalize(uploadId, filename, token)
            self.assertEqual(r.code, 200, repr(filename))
            path = self.published(uploadId)
            self.assertEqual(os.path.dirname(os.path.realpath(path)), complete, repr(filename))
            name = os.path.basename(path)
            if expected is not None:
                self.assertEqual(name, expected)
            self.assertLessEqual(len(name.encode()), 200)
            self.assertNotIn("\x00", name)
            self.assertFalse(name.startswith("."))
            with open(path, "rb") as f:
                self.assertEqual(f.read(), data)
        self.assertEqual(os.path.basename(self.published(uploadId)), "\u00e9t\u00e9 _1_.mov")
        # Nothing was written anywhere else.
        self.assertEqual(sorted(os.listdir(self.storage)), ["complete", "uploads"])

    @defer.inlineCallbacks
    def test_collisionsNeverOverwrite(self) -> Any:
        first = randomBytes(100)
        second = randomBytes(100)
        a, tokenA = yield self.upload(first)
        b, tokenB = yield self.upload(second)
        yield self.finalize(a, "same.mp4", tokenA)
        yield self.finalize(b, "same.mp4", tokenB)
        self.assertEqual(os.path.basename(self.published(b)), "same (1).mp4")
        with open(self.published(a), "rb") as f:
            self.assertEqual(f.read(), first)
        with open(self.published(b), "rb") as f:
            self.assertEqual(f.read(), second)

    @defer.inlineCallbacks
    def test_checksumOfAFileLargerThanOneChunkMatchesHashlib(self) -> Any:
        source = randomBytes(5 * 1024 * 1024 + 3)
        uploadId, token = yield self.upload(source, chunk=1024 * 1024, multipart=True)
        r = yield self.finalize(uploadId, "five.bin", token)
        self.assertEqual(json.loads(r.body_)["checksum"], "sha256:" + hashlib.sha256(source).hexdigest())
        self.assertEqual(json.loads(r.body_)["size"], len(source))


class TokenTests(FacadeTestCase):
    secret = "s3cret-shared-with-the-application-backend"
    overrides = {"uploads.token_secret": secret}

    @defer.inlineCallbacks
    def assertRefused(self, uploadId: str, code: int, **kw: Any) -> Any:
        before = self.store.get(uploadId)
        r = yield self.finalize(uploadId, "x.mp4", **kw)
        self.assertEqual(r.code, code, r.body_)
        # Changed nothing: the record, the data file and the complete area are as they were.
        self.assertEqual(self.store.get(uploadId), before)
        self.assertTrue(os.path.exists(self.store.dataPath(uploadId)))
        self.assertEqual(self.completeFiles(), [])
        return r

    @defer.inlineCallbacks
    def test_missingTokenIs401(self) -> Any:
        uploadId, token = yield self.upload(b"data")
        r = yield self.assertRefused(uploadId, 401)
        self.assertIsNotNone(h(r, "www-authenticate"))
        yield self.assertRefused(uploadId, 401, token="")
        yield self.assertRefused(uploadId, 401, headerToken="")
        r = yield self.finalize(uploadId, "x.mp4", token)
        self.assertEqual(r.code, 200)

    @defer.inlineCallbacks
    def test_wrongTokenIs403(self) -> Any:
        uploadId, token = yield self.upload(b"data")
        for wrong in ("nope", token[:-1], token + "A", token.upper(), "A" * 54, "x" * 10000):
            yield self.assertRefused(uploadId, 403, token=wrong)
        # The header wins over the body: a wrong header is not rescued by a right body.
        yield self.assertRefused(uploadId, 403, token=token, headerToken="nope")

    @defer.inlineCallbacks
    def test_tokenOfAnotherUploadIs403(self) -> Any:
        uploadId, _ = yield self.upload(b"data")
        other, otherToken = yield self.upload(b"more")
        yield self.assertRefused(uploadId, 403, token=otherToken)
        minted = mintToken(self.secret.encode(), other, int(time.time()) + 600)
        yield self.assertRefused(uploadId, 403, token=minted)

    @defer.inlineCallbacks
    def test_mintedTokenIsAccepted(self) -> Any:
        data = randomBytes(1000)
        uploadId, _ = yield self.upload(data)
        minted = mintToken(self.secret.encode(), uploadId, int(time.time()) + 600)
        r = yield self.finalize(uploadId, "m.mp4", headerToken=minted)
        self.assertEqual((r.code, json.loads(r.body_)["checksum"]), (200, sha256(data)))

    @defer.inlineCallbacks
    def test_expiredMintedTokenIs403(self) -> Any:
        uploadId, _ = yield self.upload(b"data")
        minted = mintToken(self.secret.encode(), uploadId, int(time.time()) - 1)
        r = yield self.assertRefused(uploadId, 403, token=minted)
        self.assertIn(b"expired", r.body_)

    @defer.inlineCallbacks
    def test_tokenMintedWithAnotherSecretIs403(self) -> Any:
        uploadId, _ = yield self.upload(b"data")
        minted = mintToken(b"some-other-secret-of-32-bytes-or-more", uploadId, int(time.time()) + 600)
        yield self.assertRefused(uploadId, 403, token=minted)

    @defer.inlineCallbacks
    def test_mintedTokenWithAlteredExpiryIs403(self) -> Any:
        import base64
        import struct

        uploadId, _ = yield self.upload(b"data")
        minted = mintToken(self.secret.encode(), uploadId, int(time.time()) - 1)
        raw = base64.urlsafe_b64decode(minted + "=" * (-len(minted) % 4))
        forged = base64.urlsafe_b64encode(struct.pack(">Q", int(time.time()) + 3600) + raw[8:]).decode()
        yield self.assertRefused(uploadId, 403, token=forged.rstrip("="))

    @defer.inlineCallbacks
    def test_tokenCheckedOnRepeatedFinalizeToo(self) -> Any:
        uploadId, token = yield self.upload(b"data")
        r = yield self.finalize(uploadId, "r.mp4", token)
        self.assertEqual(r.code, 200)
        r = yield self.finalize(uploadId, "r.mp4", "wrong")
        self.assertEqual(r.code, 403)
        r = yield self.finalize(uploadId, "r.mp4")
        self.assertEqual(r.code, 401)


class TuspyTests(FacadeTestCase):
    """
    The camera app speaks tus: a stock tus client (tuspy) uploads through
    the facade, and the application backend mints the finalize token.
    """

    secret = b"x" * 40
    overrides = {"uploads.token_secret": "x" * 40}

    @defer.inlineCallbacks
    def test_tusClientUploadsThenFinalize(self) -> Any:
        requireTuspy()
        data = randomBytes(2 * 1024 * 1024 + 99)

        def upload() -> str:
            uploader = tuspyUploader(self.url("/uploads"), data, 1024 * 1024,
                                     upload_checksum=True, metadata={"filename": "cam.mp4"})
            uploader.upload()
            return str(uploader.url)

        from twisted.internet import threads

        url = yield threads.deferToThread(upload)
        uploadId = url.rsplit("/", 1)[1]
        token = mintToken(self.secret, uploadId, int(time.time()) + 300)
        r = yield self.finalize(uploadId, "cam.mp4", headerToken=token)
        self.assertEqual(r.code, 200, r.body_)
        self.assertEqual(json.loads(r.body_)["checksum"], sha256(data))
        self.assertEqual(self.facade().recomputed, 0)


class ExpiringIssuedTokenTests(FacadeTestCase):
    overrides = {"uploads.token_ttl": 1}

    @defer.inlineCallbacks
    def test_expiredIssuedTokenIs403(self) -> Any:
        uploadId, token = yield self.upload(b"data")
        self.facade().tokens.clock = lambda: time.time() + 2
        r = yield self.finalize(uploadId, "late.mp4", token)
        self.assertEqual(r.code, 403)
        self.assertIn(b"expired", r.body_)
        self.assertEqual(self.completeFiles(), [])


class MintedTokensOnlyTests(FacadeTestCase):
    overrides = {"uploads.issue_tokens": False, "uploads.token_secret": "x" * 40}

    @defer.inlineCallbacks
    def test_noTokenIssuedAndOnlyMintedOnesWork(self) -> Any:
        r = yield self.create(4)
        self.assertEqual(r.code, 201)
        self.assertIsNone(h(r, "upload-token"))
        uploadId = h(r, "location").rsplit("/", 1)[1]
        yield self.patchRaw(uploadId, 0, b"data")
        r = yield self.finalize(uploadId, "a", "anything")
        self.assertEqual(r.code, 403)
        r = yield self.finalize(uploadId, "a", mintToken(b"x" * 40, uploadId, int(time.time()) + 60))
        self.assertEqual(r.code, 200)


class PatchTokenTests(FacadeTestCase):
    overrides = {"uploads.patch_requires_token": True}

    @defer.inlineCallbacks
    def test_patchAndHeadNeedTheToken(self) -> Any:
        uploadId, token = yield self.createUpload(6)
        other, otherToken = yield self.createUpload(6)
        r = yield self.patchRaw(uploadId, 0, b"abc")
        self.assertEqual(r.code, 401)
        r = yield self.patchMultipart(uploadId, 0, b"abc", headers={"X-Upload-Token": otherToken})
        self.assertEqual(r.code, 403)
        r = yield self.head(uploadId)
        self.assertEqual(r.code, 401)
        self.assertIsNone(h(r, "upload-offset"))
        self.assertEqual(self.offsetOf(uploadId), 0)
        r = yield self.patchRaw(uploadId, 0, b"abc", {"X-Upload-Token": token})
        self.assertEqual(r.code, 204)
        r = yield self.patchMultipart(uploadId, 3, b"def", headers={"X-Upload-Token": token})
        self.assertEqual(r.code, 204)
        r = yield self.head(uploadId, {"X-Upload-Token": token})
        self.assertEqual(h(r, "upload-offset"), "6")


class RestartTests(FacadeTestCase):
    @defer.inlineCallbacks
    def test_restartBetweenLastPatchAndFinalize(self) -> Any:
        data = randomBytes(3 * 1024 * 1024 + 5)
        uploadId, token = yield self.upload(data, chunk=1024 * 1024, multipart=True)
        yield self.restart()
        threads: List[str] = []
        realHash = hashesModule.sha256OfFile

        def watchedHash(path: str, length: int) -> str:
            threads.append(threading.current_thread().name)
            return realHash(path, length)

        self.patch(hashesModule, "sha256OfFile", watchedHash)
        r = yield self.finalize(uploadId, "after-restart.mp4", token)
        self.assertEqual(r.code, 200, r.body_)
        self.assertEqual(json.loads(r.body_)["checksum"], sha256(data))
        self.assertEqual(self.facade().recomputed, 1)
        # Recomputed once, in the disk pool, not on the reactor thread.
        self.assertEqual(len(threads), 1)
        self.assertNotEqual(threads[0], threading.main_thread().name)
        self.assertIn("chunkd-disk", threads[0])

    @defer.inlineCallbacks
    def test_finalizeCutShortAfterTheMoveIsFinishedLater(self) -> Any:
        """
        A crash between moving the file and recording it: the retried
        finalize, after a restart, answers as the first would have, from
        the sidecar, and nothing is published twice.
        """
        from chunkd.store import UploadStore

        data = b"cut short"
        uploadId, token = yield self.upload(data)
        real = UploadStore.update

        def failRecording(store: UploadStore, upload: str, mutate: Any) -> Any:
            if getattr(mutate, "__name__", "") == "recordPublication":
                return defer.fail(OSError(errno.EIO, "I/O error"))
            return real(store, upload, mutate)

        self.patch(UploadStore, "update", failRecording)
        r = yield self.finalize(uploadId, "clip.mp4", token)
        self.assertNotEqual(r.code, 200)
        self.flushLoggedErrors()
        self.patch(UploadStore, "update", real)
        yield self.restart()
        r = yield self.finalize(uploadId, "clip.mp4", token)
        self.assertEqual(r.code, 200, r.body_)
        answer = json.loads(r.body_)
        self.assertEqual((answer["checksum"], answer["size"]), (sha256(data), len(data)))
        record = self.store.get(uploadId)
        self.assertEqual((record.state, os.path.basename(record.published.path)), ("complete", "clip.mp4"))
        published = [n for n in os.listdir(os.path.dirname(record.published.path)) if not n.endswith(".json")]
        self.assertEqual(published, ["clip.mp4"])
        again = yield self.finalize(uploadId, "clip.mp4", token)
        self.assertEqual(again.body_, r.body_)

    @defer.inlineCallbacks
    def test_restartMidUpload(self) -> Any:
        data = randomBytes(300 * 1024)
        uploadId, token = yield self.createUpload(len(data))
        yield self.patchRaw(uploadId, 0, data[:100000])
        yield self.restart()
        r = yield self.head(uploadId)
        self.assertEqual(h(r, "upload-offset"), "100000")
        yield self.patchMultipart(uploadId, 100000, data[100000:])
        r = yield self.finalize(uploadId, "resumed.mp4", token)
        self.assertEqual(json.loads(r.body_)["checksum"], sha256(data))
        self.assertEqual(self.facade().recomputed, 1)

    @defer.inlineCallbacks
    def test_finalizeIsIdempotentAcrossARestart(self) -> Any:
        uploadId, token = yield self.upload(b"keep me")
        first = yield self.finalize(uploadId, "k.txt", token)
        yield self.restart()
        # What chunkd does at start-up: a published upload has no data file
        # in uploads/, and must not be taken for a lost one.
        self.store.reconcile()
        again = yield self.finalize(uploadId, "k.txt", token)
        self.assertEqual((again.code, json.loads(again.body_)), (200, json.loads(first.body_)))


class HealthTests(FacadeTestCase):
    @defer.inlineCallbacks
    def test_healthy(self) -> Any:
        r = yield self.request("GET", "/health")
        self.assertEqual((r.code, json.loads(r.body_)), (200, {"status": "OK"}))
        self.assertEqual(h(r, "content-type"), "application/json")
        self.assertEqual(h(r, "cache-control"), "no-store")
        r = yield self.request("HEAD", "/health")
        self.assertEqual(r.code, 200)
        # The probe leaves nothing behind.
        self.assertEqual(os.listdir(self.store.uploads), [])

    @defer.inlineCallbacks
    def test_storageGoneIs503(self) -> Any:
        shutil.rmtree(self.storage)
        r = yield self.request("GET", "/health")
        self.assertEqual(r.code, 503)
        answer = json.loads(r.body_)
        self.assertEqual(answer["status"], "UNAVAILABLE")
        self.assertEqual(answer["reason"], "the storage is not writable (No such file or directory)")
        # The reason names no path of the server.
        self.assertNotIn(self.storage, r.body_.decode())


class ReloadTests(FacadeTestCase):
    @defer.inlineCallbacks
    def test_aReloadedConfigAppliesToTheNextRequest(self) -> Any:
        from dataclasses import replace

        facade = self.facade()
        uploads = replace(self.config.uploads, min_free_space=2**60, issue_tokens=False)
        facade.reconfigure(replace(self.config, uploads=uploads))
        r = yield self.request("GET", "/health")
        self.assertEqual(r.code, 503)
        r = yield self.create(5)
        self.assertIsNone(h(r, "upload-token"))


class CompletedAreaHealthTests(FacadeTestCase):
    @defer.inlineCallbacks
    def test_unusableCompletedAreaIs503(self) -> Any:
        uploadId, token = yield self.upload(b"x")
        yield self.finalize(uploadId, "x", token)
        shutil.rmtree(self.completeDir())
        with open(self.completeDir(), "wb"):
            pass  # a file where the directory should be
        r = yield self.request("GET", "/health")
        self.assertEqual(r.code, 503)
        self.assertEqual(json.loads(r.body_)["reason"],
                         "the completed area is not writable (Not a directory)")


class HealthFloorTests(FacadeTestCase):
    overrides = {"uploads.min_free_space": "1000TiB"}

    @defer.inlineCallbacks
    def test_belowTheFreeSpaceFloorIs503(self) -> Any:
        r = yield self.request("GET", "/health")
        self.assertEqual(r.code, 503)
        self.assertIn("below the floor", json.loads(r.body_)["reason"])


class OtherMountTests(FacadeTestCase):
    mount = "/api/chunks"
    overrides = {"uploads.path": "/api/chunks/"}

    @defer.inlineCallbacks
    def test_mountedWhereConfiguredWithHealthAtTheRoot(self) -> Any:
        data = randomBytes(1000)
        uploadId, token = yield self.upload(data, chunk=300, multipart=True)
        r = yield self.finalize(uploadId, "a.mp4", token)
        self.assertEqual(json.loads(r.body_)["checksum"], sha256(data))
        r = yield self.request("GET", "/health")
        self.assertEqual(r.code, 200)
        r = yield self.request("POST", "/uploads", headers={"Upload-Length": "1"})
        self.assertIn(r.code, (404, 405))  # 405: only the CORS preflight route matches
        self.assertIsNone(h(r, "location"))


class DisabledTests(FacadeTestCase):
    overrides = {"uploads.enabled": False}

    @defer.inlineCallbacks
    def test_offMeansNoRoutes(self) -> Any:
        r = yield self.create(10)
        self.assertIn(r.code, (404, 405))
        self.assertEqual(os.listdir(self.store.uploads), [])
        r = yield self.request("GET", "/health")
        self.assertIn(r.code, (404, 405))
