"""
Resumable Uploads for HTTP (L{chunkd.protocols.ietf}) over a real socket,
read byte for byte where interim responses matter: the 104 before the
body, progress 104s carrying durable offsets, 100 Continue still sent, no
104 to an HTTP/1.0 client; then every interop version's header names,
status codes, limits and problem documents, each rule with a request that
breaks it; digests; and the one upload shared with tus.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any, Dict, List, Optional

from twisted.internet import defer

from tests.helpers import (
    OCTETS,
    TUS,
    RawConnection,
    ServerTestCase,
    deferLater,
    finalResponse,
    h,
    httpResponses,
    randomBytes,
    rawRequest,
)

PARTIAL = "application/partial-upload"
PROBLEMS = "https://iana.org/assignments/http-problem-types#"


def head(method: str, path: str, headers: Dict[str, str], length: Optional[int] = None,
         version: bytes = b"HTTP/1.1") -> bytes:
    lines = [b"%s %s %s" % (method.encode(), path.encode(), version), b"Host: 127.0.0.1"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}".encode("latin-1"))
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def interim(raw: bytes) -> List[Dict[str, str]]:
    return [headers for status, headers, _ in httpResponses(raw) if status == 104]


def final(raw: bytes) -> "tuple[int, Dict[str, str], bytes]":
    return [r for r in httpResponses(raw) if r[0] >= 200][-1]


class IetfTestCase(ServerTestCase):
    overrides: Dict[str, object] = {"ietf.progress_interval": 0, "storage.checkpoint_every": 65536,
                                    "disk.min_batch": 65536}

    @property
    def portNumber(self) -> int:
        return int(self.port.getHost().port)

    @defer.inlineCallbacks
    def exchange(self, method: str, path: str, headers: Dict[str, str], body: bytes = b"",
                 version: bytes = b"HTTP/1.1") -> Any:
        """One request on its own connection; every response it got."""
        connection = yield RawConnection.open(self.portNumber)
        connection.write(head(method, path, dict(headers, Connection="close"), len(body), version) + body)
        raw = yield connection.closed
        return raw

    @defer.inlineCallbacks
    def create(self, v: Optional[int] = 8, body: bytes = b"", complete: bool = False,
               path: str = "/rufh/", **headers: str) -> Any:
        h_ = {name.replace("_", "-"): value for name, value in headers.items()}
        if v is not None:
            h_["Upload-Draft-Interop-Version"] = str(v)
        if v == 3:
            h_.setdefault("Upload-Incomplete", "?0" if complete else "?1")
        else:
            h_.setdefault("Upload-Complete", "?1" if complete else "?0")
        raw = yield self.exchange("POST", path, h_, body)
        return raw

    @defer.inlineCallbacks
    def created(self, v: Optional[int] = 8, body: bytes = b"", complete: bool = False, **headers: str) -> Any:
        raw = yield self.create(v, body, complete, **headers)
        status, got, _ = final(raw)
        self.assertEqual(status, 201, raw)
        return got["location"].split("127.0.0.1", 1)[1].split("/", 1)[1]

    @defer.inlineCallbacks
    def append(self, path: str, offset: int, body: bytes, v: Optional[int] = 8, complete: bool = False,
               **headers: str) -> Any:
        h_ = {"Upload-Offset": str(offset), "Content-Type": PARTIAL}
        if v is not None:
            h_["Upload-Draft-Interop-Version"] = str(v)
        if v == 3:
            h_["Upload-Incomplete"] = "?0" if complete else "?1"
        else:
            h_["Upload-Complete"] = "?1" if complete else "?0"
        h_.update({name.replace("_", "-"): value for name, value in headers.items()})
        raw = yield self.exchange("PATCH", "/" + path, h_, body)
        return final(raw)

    @defer.inlineCallbacks
    def offsetOf(self, path: str, v: Optional[int] = 8) -> Any:
        h_ = {} if v is None else {"Upload-Draft-Interop-Version": str(v)}
        raw = yield self.exchange("HEAD", "/" + path, h_)
        return final(raw)


class InterimResponseTests(IetfTestCase):
    @defer.inlineCallbacks
    def test_104BeforeTheBody(self) -> Any:
        """
        The 104 with Location and Upload-Limit comes as soon as the headers
        are in -- the client has sent no byte of its body yet -- then the
        body is taken and the final answer is the creation.
        """
        data = randomBytes(1000)
        connection = yield RawConnection.open(self.portNumber)
        self.addCleanup(connection.close)
        connection.write(head("POST", "/rufh/", {"Upload-Draft-Interop-Version": "8",
                                                 "Upload-Complete": "?1"}, len(data)))
        raw = yield connection.waitFor(lambda raw: interim(raw))
        self.assertTrue(raw.startswith(b"HTTP/1.1 104 Upload Resumption Supported\r\n"), raw)
        [first] = interim(raw)
        self.assertEqual(first["upload-draft-interop-version"], "8")
        self.assertIn("/rufh/", first["location"])
        self.assertRegex(first["upload-limit"], r"^min-size=0, max-age=86[34][0-9][0-9]$")
        connection.write(data)
        raw = yield connection.waitFor(finalResponse)
        status, headers, _ = final(raw)
        self.assertEqual((status, headers["upload-complete"], headers["upload-offset"]), (201, "?1", "1000"))
        self.assertEqual(headers["location"], first["location"])
        uploadId = first["location"].rsplit("/", 1)[1]
        self.assertEqual(self.dataOf(uploadId), data)

    @defer.inlineCallbacks
    def test_progressReportsDurableOffsets(self) -> Any:
        """
        While a body streams, 104s report offsets already recorded: each
        is at most what was sent and at most what the record says.
        """
        data = randomBytes(1024 * 1024)
        connection = yield RawConnection.open(self.portNumber)
        self.addCleanup(connection.close)
        connection.write(head("POST", "/rufh/", {"Upload-Draft-Interop-Version": "8",
                                                 "Upload-Complete": "?1"}, len(data)))
        raw = yield connection.waitFor(lambda raw: interim(raw))
        uploadId = interim(raw)[0]["location"].rsplit("/", 1)[1]
        sent = 0
        reported: List[int] = []
        for start in range(0, len(data), 128 * 1024):
            connection.write(data[start:start + 128 * 1024])
            sent = start + 128 * 1024
            yield deferLater(0.05)
            for headers in interim(connection.received)[1 + len(reported):]:
                offset = int(headers["upload-offset"])
                self.assertNotIn("location", headers)
                self.assertEqual(headers["upload-draft-interop-version"], "8")
                self.assertLessEqual(offset, sent)
                self.assertLessEqual(offset, self.store.get(uploadId).offset)
                reported.append(offset)
        raw = yield connection.waitFor(finalResponse)
        self.assertGreaterEqual(len(reported), 3, reported)
        self.assertEqual(reported, sorted(reported))
        self.assertEqual(final(raw)[1]["upload-offset"], str(len(data)))

    @defer.inlineCallbacks
    def test_100ContinueIsStillSent(self) -> Any:
        data = b"hello"
        connection = yield RawConnection.open(self.portNumber)
        self.addCleanup(connection.close)
        connection.write(head("POST", "/rufh/", {"Upload-Draft-Interop-Version": "8", "Upload-Complete": "?1",
                                                 "Expect": "100-continue"}, len(data)))
        raw = yield connection.waitFor(lambda raw: b"HTTP/1.1 100 Continue" in raw and interim(raw))
        connection.write(data)
        raw = yield connection.waitFor(finalResponse)
        self.assertEqual([r[0] for r in httpResponses(raw)].count(100), 1)
        self.assertEqual(final(raw)[0], 201)

    @defer.inlineCallbacks
    def test_noInterimResponseForHTTP10(self) -> Any:
        raw = yield self.exchange("POST", "/rufh/", {"Upload-Draft-Interop-Version": "8",
                                                     "Upload-Complete": "?1"}, b"abc", version=b"HTTP/1.0")
        self.assertEqual([r[0] for r in httpResponses(raw)], [201])

    @defer.inlineCallbacks
    def test_clientsThatIgnore1xxStillWork(self) -> Any:
        """treq (Twisted's client) skips the 104 and reads the 201."""
        response = yield self.client.post(self.url("/rufh/"), data=b"hello", headers={
            "Upload-Draft-Interop-Version": "8", "Upload-Complete": "?1"})
        yield response.content()
        self.assertEqual((response.code, h(response, "upload-offset")), (201, "5"))

    @defer.inlineCallbacks
    def test_no104WithoutAVersionHeaderUntilRFC(self) -> Any:
        """
        At the own mount, a request naming no version is served as the
        RFC: 104 without the interop header; nothing is echoed.
        """
        raw = yield self.create(None, b"abc", complete=True)
        [first] = interim(raw)
        self.assertNotIn("upload-draft-interop-version", first)
        self.assertNotIn("upload-draft-interop-version", final(raw)[1])


class VersionTests(IetfTestCase):
    """
    What differs between interop versions, each checked on the wire.
    """

    @defer.inlineCallbacks
    def test_completenessHeaderPerVersion(self) -> Any:
        for v in (3, 4, 5, 6, 7, 8):
            path = yield self.created(v, b"abc")
            status, headers, _ = yield self.offsetOf(path, v)
            self.assertEqual(status, 204)
            self.assertEqual(headers["upload-draft-interop-version"], str(v))
            if v == 3:
                self.assertEqual(headers["upload-incomplete"], "?1")
                self.assertNotIn("upload-complete", headers)
            else:
                self.assertEqual(headers["upload-complete"], "?0")
            status, headers, _ = yield self.append(path, 3, b"def", v, complete=True)
            self.assertEqual(status, 204, (v, headers))
            self.assertEqual(headers["upload-offset"], "6")
            self.assertEqual(headers.get("upload-incomplete" if v == 3 else "upload-complete"),
                             "?0" if v == 3 else "?1")

    @defer.inlineCallbacks
    def test_everyVersionAnnouncesTheUploadAndCancels(self) -> Any:
        """
        Every version: a 104 with Location and the echoed version before
        the body, a 201 with the offset, a 204 DELETE, then the upload is
        gone (410, as tus says of a terminated upload).
        """
        for v in (3, 4, 5, 6, 7, 8):
            raw = yield self.create(v, b"abc")
            [first] = interim(raw)
            self.assertEqual(first["upload-draft-interop-version"], str(v))
            status, headers, _ = final(raw)
            self.assertEqual((status, headers["location"], headers["upload-offset"]), (201, first["location"], "3"))
            path = first["location"].split("127.0.0.1", 1)[1].split("/", 1)[1]
            raw = yield self.exchange("DELETE", "/" + path, {"Upload-Draft-Interop-Version": str(v)})
            self.assertEqual(final(raw)[0], 204, v)
            status, _, _ = yield self.offsetOf(path, v)
            self.assertEqual(status, 410, v)

    @defer.inlineCallbacks
    def test_limitsPerVersion(self) -> Any:
        seen = {}
        for v in (3, 5, 6, 7, 8, None):
            path = yield self.created(v)
            status, headers, _ = yield self.offsetOf(path, v)
            seen[v] = headers.get("upload-limit", "")
        self.assertEqual((seen[3], seen[5]), ("", ""))
        self.assertRegex(seen[6], r"^min-size=0, expires=\d+$")
        for v in (7, 8, None):
            self.assertRegex(seen[v], r"^min-size=0, max-age=\d+$")

    @defer.inlineCallbacks
    def test_partialUploadMediaTypeFrom6(self) -> Any:
        for v, expected in ((5, 204), (6, 415), (8, 415)):
            path = yield self.created(v)
            status, _, body = yield self.append(path, 0, b"x", v, Content_Type=OCTETS)
            self.assertEqual(status, expected, (v, body))

    @defer.inlineCallbacks
    def test_appendWithoutCompletenessBefore7Completes(self) -> Any:
        path = yield self.created(5, Upload_Length="2")
        raw = yield self.exchange("PATCH", "/" + path, {"Upload-Draft-Interop-Version": "5",
                                                        "Upload-Offset": "0"}, b"ab")
        self.assertEqual(final(raw)[1]["upload-complete"], "?1")
        path = yield self.created(7)
        raw = yield self.exchange("PATCH", "/" + path, {"Upload-Draft-Interop-Version": "7", "Upload-Offset": "0",
                                                        "Content-Type": PARTIAL}, b"ab")
        self.assertEqual(final(raw)[0], 400)

    @defer.inlineCallbacks
    def test_unknownVersionIs400(self) -> Any:
        for value in ("9", "2", "x", "-1"):
            raw = yield self.create(None, Upload_Draft_Interop_Version=value)
            status, headers, body = final(raw)
            self.assertEqual(status, 400, value)
            self.assertIn(b"Upload-Draft-Interop-Version", body)
            self.assertEqual(interim(raw), [])

    @defer.inlineCallbacks
    def test_creationNeedsCompleteness(self) -> Any:
        raw = yield self.exchange("POST", "/rufh/", {"Upload-Draft-Interop-Version": "8"}, b"")
        self.assertEqual(final(raw)[0], 400)
        self.assertIn(b"Upload-Complete", final(raw)[2])


class ErrorTests(IetfTestCase):
    @defer.inlineCallbacks
    def test_offsetMismatchProblem(self) -> Any:
        path = yield self.created(8, b"abc")
        status, headers, body = yield self.append(path, 7, b"x")
        self.assertEqual((status, headers["upload-offset"], headers["upload-complete"]), (409, "3", "?0"))
        self.assertEqual(headers["content-type"], "application/problem+json")
        document = json.loads(body)
        self.assertEqual(document["type"], PROBLEMS + "mismatching-upload-offset")
        self.assertEqual((document["expected-offset"], document["provided-offset"]), (3, 7))
        # Before problem types (5): plain text, the same status and offset.
        path = yield self.created(5, b"abc")
        status, headers, body = yield self.append(path, 7, b"x", 5)
        self.assertEqual((status, headers["upload-offset"]), (409, "3"))
        self.assertTrue(headers["content-type"].startswith("text/plain"))

    @defer.inlineCallbacks
    def test_inconsistentLength(self) -> Any:
        raw = yield self.create(8, b"abcde", complete=True, Upload_Length="10")
        status, headers, body = final(raw)
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(body)["type"], PROBLEMS + "inconsistent-upload-length")
        self.assertEqual(interim(raw), [])  # refused before any upload existed
        path = yield self.created(8, Upload_Length="10")
        status, _, body = yield self.append(path, 0, b"x", Upload_Length="11")
        self.assertEqual((status, json.loads(body)["type"]), (400, PROBLEMS + "inconsistent-upload-length"))
        status, _, body = yield self.append(path, 0, b"x" * 11)
        self.assertEqual(status, 400, body)
        status, headers, _ = yield self.offsetOf(path)
        self.assertEqual(headers["upload-offset"], "0")

    @defer.inlineCallbacks
    def test_appendToACompletedUpload(self) -> Any:
        path6 = yield self.created(6, b"abc", complete=True)
        status, _, body = yield self.append(path6, 3, b"more", 6)
        self.assertEqual((status, json.loads(body)["type"]), (400, PROBLEMS + "completed-upload"))
        path8 = yield self.created(8, b"abc", complete=True)
        status, _, body = yield self.append(path8, 3, b"more", 8)
        self.assertEqual((status, json.loads(body)["type"]), (400, PROBLEMS + "inconsistent-upload-length"))
        # The completing append asked again (its answer was lost): answered again.
        status, headers, _ = yield self.append(path8, 3, b"", 8, complete=True)
        self.assertEqual((status, headers["upload-complete"], headers["upload-offset"]), (204, "?1", "3"))

    @defer.inlineCallbacks
    def test_limitsExceededAre413(self) -> Any:
        yield self.startServer(dict(self.overrides, **{"limits.max_size": 100, "ietf.max_append_size": 10}))
        raw = yield self.create(8, Upload_Length="101")
        self.assertEqual(final(raw)[0], 413)
        raw = yield self.create(8, b"x" * 11)
        status, headers, _ = final(raw)
        self.assertEqual(status, 413)
        self.assertIn("max-append-size=10", headers["upload-limit"])
        raw = yield self.exchange("OPTIONS", "/rufh/", {"Upload-Draft-Interop-Version": "8"})
        self.assertEqual(final(raw)[1]["upload-limit"], "max-size=100, min-size=0, max-append-size=10, max-age=86400")

    @defer.inlineCallbacks
    def test_twoAppendsAtOnce(self) -> Any:
        """
        While one append streams, a second is refused (423, tus's "locked":
        the lock is the store's, across processes); the first completes.
        """
        path = yield self.created(8)
        first = yield RawConnection.open(self.portNumber)
        self.addCleanup(first.close)
        first.write(head("PATCH", "/" + path, {"Upload-Draft-Interop-Version": "8", "Upload-Offset": "0",
                                               "Upload-Complete": "?1", "Content-Type": PARTIAL}, 10) + b"abcde")
        yield deferLater(0.2)
        status, _, _ = yield self.append(path, 0, b"xyz")
        self.assertEqual(status, 423)
        first.write(b"fghij")
        raw = yield first.waitFor(finalResponse)
        self.assertEqual(final(raw)[1]["upload-offset"], "10")


class DigestTests(IetfTestCase):
    @defer.inlineCallbacks
    def test_contentDigestChecked(self) -> Any:
        path = yield self.created(8)
        good = base64.b64encode(hashlib.sha256(b"hello").digest()).decode()
        status, _, body = yield self.append(path, 0, b"hellO", Content_Digest=f"sha-256=:{good}:")
        self.assertEqual(status, 400, body)
        status, headers, _ = yield self.offsetOf(path)
        self.assertEqual(headers["upload-offset"], "0")  # nothing kept
        status, headers, _ = yield self.append(path, 0, b"hello", Content_Digest=f"sha-256=:{good}:")
        self.assertEqual((status, headers["upload-offset"]), (204, "5"))

    @defer.inlineCallbacks
    def test_reprDigestAndWantReprDigest(self) -> Any:
        data = b"the whole representation"
        sha512 = base64.b64encode(hashlib.sha512(data).digest()).decode()
        path = yield self.created(8, data[:5], Repr_Digest=f"sha-512=:{sha512}:")
        status, headers, _ = yield self.append(path, 5, data[5:], complete=True, Want_Repr_Digest="sha-256=5")
        self.assertEqual(status, 204)
        self.assertEqual(headers["repr-digest"], f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:")
        wrong = base64.b64encode(hashlib.sha512(b"other").digest()).decode()
        finished: List[str] = []
        self.store.events.subscribe(lambda event, record: finished.append(record.id) if event == "post-finish" else None)
        path = yield self.created(8, b"abc", Repr_Digest=f"sha-512=:{wrong}:")
        status, _, body = yield self.append(path, 3, b"", complete=True)
        self.assertEqual(status, 400, body)
        self.assertIn(b"Repr-Digest", body)
        # Checked before it was recorded complete: never announced finished;
        # the upload has failed (the draft: do not process it).
        uploadId = path.rsplit("/", 1)[1]
        self.assertNotIn(uploadId, finished)
        status, _, _ = yield self.offsetOf(path)
        self.assertEqual(status, 410)

    @defer.inlineCallbacks
    def test_refusedCreationLeavesNoUpload(self) -> Any:
        """
        A creation whose body is refused (a Content-Digest that does not
        match, a body longer than the declared length) leaves no upload.
        """
        before = sorted(os.listdir(self.store.uploads))
        digest = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
        raw = yield self.create(8, b"hello", Content_Digest=f"sha-256=:{digest}:")
        self.assertEqual(final(raw)[0], 400, raw)
        raw = yield self.create(8, b"0123456789", Upload_Length="5")
        self.assertEqual(final(raw)[0], 400, raw)
        self.assertEqual(interim(raw), [])  # refused before any upload existed
        self.assertEqual(sorted(n for n in os.listdir(self.store.uploads) if n != "reserve"),
                         [n for n in before if n != "reserve"])


class OneUploadTests(IetfTestCase):
    @defer.inlineCallbacks
    def test_tusSeesADraftUploadAndBack(self) -> Any:
        path = yield self.created(8, b"abc", Upload_Length="6")
        uploadId = path.rsplit("/", 1)[1]
        response = yield self.client.head(self.url(f"/files/{uploadId}"), headers=TUS)
        self.assertEqual((response.code, h(response, "upload-offset"), h(response, "upload-length")),
                         (200, "3", "6"))
        self.assertIsNotNone(h(response, "upload-expires"))
        response = yield self.client.patch(self.url(f"/files/{uploadId}"), data=b"def", headers=dict(
            TUS, **{"Upload-Offset": "3", "Content-Type": OCTETS}))
        self.assertEqual(response.code, 204)
        status, headers, _ = yield self.offsetOf(path)
        self.assertEqual((headers["upload-offset"], headers["upload-complete"]), ("6", "?1"))

    @defer.inlineCallbacks
    def test_aFinalConcatenationIsNotAppendedTo(self) -> Any:
        """
        tus makes a final concatenation of its parts; the draft must not
        write into it either (tus refuses its PATCH with 403).
        """
        response = yield self.client.post(self.url("/files/"), headers=dict(TUS, **{
            "Upload-Length": "5", "Upload-Concat": "partial"}))
        yield response.content()
        part = h(response, "location")
        response = yield self.client.post(self.url("/files/"), headers=dict(TUS, **{
            "Upload-Concat": f"final;{part}"}))
        yield response.content()
        final_ = "files/" + h(response, "location").rsplit("/", 1)[1]
        status, _, body = yield self.append(final_, 0, b"EVIL!", 6, complete=True)
        self.assertEqual(status, 403, body)
        record = self.store.get(final_.rsplit("/", 1)[1])
        self.assertEqual(record.offset, 0)

    @defer.inlineCallbacks
    def test_theTusMountServesTheDraftByHeader(self) -> Any:
        raw = yield self.create(6, b"abc", path="/files/")
        [first] = interim(raw)
        self.assertIn("/files/", first["location"])
        path = first["location"].split("127.0.0.1", 1)[1].split("/", 1)[1]
        status, headers, _ = yield self.append(path, 3, b"d", 6, complete=True)
        self.assertEqual((status, headers["upload-complete"]), (204, "?1"))
        # Without the header the same path is tus.
        response = yield self.client.head(self.url("/" + path), headers=TUS)
        self.assertEqual((response.code, h(response, "tus-resumable")), (200, "1.0.0"))

    @defer.inlineCallbacks
    def test_optionsAndDelete(self) -> Any:
        raw = yield self.exchange("OPTIONS", "/rufh/", {})
        status, headers, _ = final(raw)
        self.assertEqual((status, headers["upload-limit"], headers["accept-patch"]),
                         (204, "min-size=0, max-age=86400", PARTIAL))
        path = yield self.created(8, b"abc")
        raw = yield self.exchange("DELETE", "/" + path, {"Upload-Draft-Interop-Version": "8"})
        self.assertEqual(final(raw)[0], 204)
        status, _, _ = yield self.offsetOf(path)
        self.assertEqual(status, 410)

    @defer.inlineCallbacks
    def test_interruptedCreationKeepsWhatArrivedAndResumes(self) -> Any:
        data = randomBytes(300_000)
        connection = yield RawConnection.open(self.portNumber)
        connection.write(head("POST", "/rufh/", {"Upload-Draft-Interop-Version": "8", "Upload-Complete": "?1"},
                              len(data)) + data[:200_000])
        raw = yield connection.waitFor(lambda raw: interim(raw))
        path = interim(raw)[0]["location"].split("127.0.0.1", 1)[1].split("/", 1)[1]
        yield deferLater(0.3)
        connection.transport.abortConnection()  # type: ignore[union-attr]
        yield connection.closed
        yield deferLater(0.2)
        status, headers, _ = yield self.offsetOf(path)
        offset = int(headers["upload-offset"])
        self.assertEqual(headers["upload-complete"], "?0")
        self.assertLessEqual(offset, 200_000)
        status, headers, _ = yield self.append(path, offset, data[offset:], complete=True)
        self.assertEqual((status, headers["upload-complete"]), (204, "?1"))
        self.assertEqual(self.dataOf(path.rsplit("/", 1)[1]), data)

    @defer.inlineCallbacks
    def test_getAnswersAsHead(self) -> Any:
        path = yield self.created(8, b"abc")
        raw = yield self.exchange("GET", "/" + path, {"Upload-Draft-Interop-Version": "8"})
        status, headers, body = final(raw)
        self.assertEqual((status, headers["upload-offset"], headers["cache-control"], body), (204, "3", "no-store", b""))


class RawRequestTests(IetfTestCase):
    @defer.inlineCallbacks
    def test_rawRequestHelperSeesTheWholeExchange(self) -> Any:
        raw = yield rawRequest(self.portNumber, head("POST", "/rufh/", {
            "Upload-Draft-Interop-Version": "7", "Upload-Complete": "?1", "Connection": "close"}, 2) + b"ok")
        self.assertEqual([r[0] for r in httpResponses(raw)], [104, 201])
