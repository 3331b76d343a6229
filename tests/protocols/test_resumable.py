"""
Resumable.js and flow.js over a real socket, in the clients' own wire format:
every rule of the chunk protocol has a test that would break if the rule
did.

The requests are built here the way the clients build them (see
C{ClientFile}): the chunk geometry of C{ResumableChunk}/C{FlowChunk}, the
parameters in the clients' order, Resumable.js repeating them in the query
string of a multipart request, flow.js sending them only as form fields,
and the multipart body a browser's C{FormData} produces (fields first, then
the file part with a file name and C{Content-Type}).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

from twisted.internet import defer
from twisted.trial import unittest

from chunkd.complete import CompletedFiles
from chunkd.protocols.resumable import (
    FLOW,
    RESUMABLE,
    ChunkProtocol,
    Dialect,
    chunkCounts,
    expectedChunkSize,
    uploadIdFor,
)
from chunkd.store import COMPLETE
from tests.helpers import ServerTestCase, deferLater, parseResponse, randomBytes, rawRequest

BOUNDARY = "----WebKitFormBoundaryq0bIRZ3BhUv5k8Tn"


# -- the clients, as far as the server can see them -----------------------------------


@dataclass
class ClientFile:
    """
    A file as Resumable.js 1.1 / flow.js 2.14 cut it into chunks: C{N =
    max(round(S / C), 1)} with C{round} = floor (or ceil with
    C{forceChunkSize}); chunk n covers C{[(n-1)C, min(S, nC))}, and in the
    default mode the last chunk runs to the end of the file.
    """

    data: bytes
    chunkSize: int
    identifier: str
    filename: str
    relativePath: Optional[str] = None
    type: str = "application/octet-stream"
    force: bool = False

    @property
    def count(self) -> int:
        size = len(self.data)
        rounded = -(-size // self.chunkSize) if self.force else size // self.chunkSize
        return max(rounded, 1)

    def bounds(self, number: int) -> Tuple[int, int]:
        size = len(self.data)
        start = (number - 1) * self.chunkSize
        end = min(size, number * self.chunkSize)
        if size - end < self.chunkSize and not self.force:
            end = size
        return start, end

    def bytesOf(self, number: int) -> bytes:
        start, end = self.bounds(number)
        return self.data[start:end]

    def params(self, dialect: Dialect, number: int, **override: Any) -> List[Tuple[str, str]]:
        """
        The chunk's parameters, in the order the client sends them.
        """
        start, end = self.bounds(number)
        p = dialect.prefix
        pairs = [
            (p + "ChunkNumber", str(number)),
            (p + "ChunkSize", str(self.chunkSize)),
            (p + "CurrentChunkSize", str(end - start)),
            (p + "TotalSize", str(len(self.data))),
        ]
        if dialect.hasType:
            pairs.append((p + "Type", self.type))
        pairs += [
            (p + "Identifier", self.identifier),
            (p + "Filename", self.filename),
            (p + "RelativePath", self.relativePath or self.filename),
            (p + "TotalChunks", str(self.count)),
        ]
        result = []
        for name, value in pairs:
            key = name[len(p):]
            if key in override:
                if override[key] is None:
                    continue
                value = str(override[key])
            result.append((name, value))
        return result


def queryString(pairs: List[Tuple[str, str]]) -> str:
    # encodeURIComponent: everything but A-Z a-z 0-9 - _ . ! ~ * ' ( ) escaped.
    return "&".join(f"{quote(k, safe='')}={quote(v, safe=chr(33) + chr(39) + '()*~')}" for k, v in pairs)


def formData(fields: List[Tuple[str, str]], fileField: str, filename: str, content: bytes,
             contentType: str = "application/octet-stream") -> bytes:
    """
    A body as Chrome's C{FormData} sends it: each field a part, then the
    file part (quotes and line breaks in names percent-escaped, as Chrome
    does).
    """

    def escape(name: str) -> str:
        return name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")

    parts = []
    for name, value in fields:
        parts.append(
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{escape(name)}\"\r\n\r\n".encode()
            + value.encode("utf-8") + b"\r\n"
        )
    parts.append(
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{fileField}\"; "
        f"filename=\"{escape(filename)}\"\r\nContent-Type: {contentType}\r\n\r\n".encode("utf-8")
        + content + b"\r\n"
    )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


class ChunkTestCase(ServerTestCase):
    """
    Speaks both clients' wire format to a real chunkd.
    """

    def startServer(self, overrides: Dict[str, object]) -> Any:
        # Registered before the server's own cleanups, so it runs after them.
        self.addCleanup(shutil.rmtree, self.storage, True)
        return super().startServer(overrides)

    def mountOf(self, dialect: Dialect) -> str:
        return getattr(self.config, dialect.name).path

    @defer.inlineCallbacks
    def send(self, dialect: Dialect, f: ClientFile, number: int, octet: bool = False,
             method: str = "POST", body: Optional[bytes] = None, **override: Any) -> Any:
        """
        Upload one chunk as the client would; returns (status, body).
        """
        params = f.params(dialect, number, **override)
        content = f.bytesOf(number) if body is None else body
        mount = self.mountOf(dialect)
        if octet:
            url = self.url(f"{mount}?{queryString(params)}")
            headers = {"Content-Type": "application/octet-stream"} if dialect is RESUMABLE else {}
            if dialect is FLOW and f.type:
                headers = {"Content-Type": f.type}  # flow.js sends the Blob, typed as the file
            data = content
        else:
            # Resumable.js repeats its parameters in the query; flow.js does not.
            url = self.url(f"{mount}?{queryString(params)}" if dialect is RESUMABLE else mount)
            filename = f.filename
            data = formData(params, "file", filename, content,
                            "application/octet-stream" if dialect is RESUMABLE else (f.type or "application/octet-stream"))
            headers = {"Content-Type": MULTIPART}
        response = yield self.client.request(method, url, data=data, headers=headers)
        text = yield response.content()
        return response.code, text

    @defer.inlineCallbacks
    def test(self, dialect: Dialect, f: ClientFile, number: int, **override: Any) -> Any:
        """
        The test-chunk GET; returns (status, body).
        """
        url = self.url(f"{self.mountOf(dialect)}?{queryString(f.params(dialect, number, **override))}")
        response = yield self.client.get(url)
        text = yield response.content()
        return response.code, text

    @defer.inlineCallbacks
    def uploadAll(self, dialect: Dialect, f: ClientFile, order: Optional[List[int]] = None, **kw: Any) -> Any:
        for number in order or range(1, f.count + 1):
            status, text = yield self.send(dialect, f, number, **kw)
            self.assertEqual(status, 200, (number, text))

    def completedDir(self) -> str:
        return os.path.join(self.storage, "complete")

    def completed(self, dialect: Dialect, f: ClientFile) -> Tuple[bytes, Dict[str, Any]]:
        """
        The published file and its sidecar.
        """
        uploadId = uploadIdFor(dialect, f.identifier)
        path = os.path.join(self.completedDir(), uploadId)
        with open(path, "rb") as data, open(path + ".json", encoding="utf-8") as sidecar:
            return data.read(), json.load(sidecar)

    def assertCompleted(self, dialect: Dialect, f: ClientFile) -> Dict[str, Any]:
        data, info = self.completed(dialect, f)
        self.assertEqual(data, f.data)  # byte for byte
        self.assertEqual(info["size"], len(f.data))
        self.assertEqual(info["sha256"], hashlib.sha256(f.data).hexdigest())
        record = self.store.get(uploadIdFor(dialect, f.identifier))
        self.assertEqual(record.state, COMPLETE)
        self.assertEqual(record.length, len(f.data))
        # Where webhooks and start-up reconciliation look for them:
        self.assertEqual(record.published.path, os.path.join(self.completedDir(), record.id))
        self.assertEqual(record.published.sha256, info["sha256"])
        return info

    def assertNothingStored(self) -> None:
        for directory in ("uploads", "complete"):
            path = os.path.join(self.storage, directory)
            self.assertEqual(os.listdir(path) if os.path.isdir(path) else [], [], directory)


def sample(size: int, chunkSize: int = 1000, name: str = "photo.jpg", **kw: Any) -> ClientFile:
    identifier = kw.pop("identifier", f"{size}-{name.replace('.', '')}")
    return ClientFile(randomBytes(size), chunkSize, identifier, name, **kw)


# -- geometry as the clients compute it ---------------------------------------------------


class GeometryTests(unittest.SynchronousTestCase):
    def test_countsAndSizesMatchTheClients(self) -> None:
        for size in (0, 1, 999, 1000, 1001, 1999, 2000, 2001, 3999, 4000, 4001, 10**6 + 7):
            for force in (False, True):
                f = ClientFile(b"\0" * size, 1000, "x", "x", force=force)
                self.assertIn(f.count, chunkCounts(size, 1000))
                total = 0
                for n in range(1, f.count + 1):
                    start, end = f.bounds(n)
                    self.assertEqual(start, (n - 1) * 1000)
                    self.assertEqual(end - start, expectedChunkSize(size, 1000, f.count, n))
                    total += end - start
                self.assertEqual(total, size)


# -- the wire format of each client ----------------------------------------------------------


class WireFormatTests(ChunkTestCase):
    @defer.inlineCallbacks
    def test_resumableMultipartWithTestChunks(self) -> Any:
        f = sample(3 * 1000 + 700)  # N = 3, the last chunk 1700 bytes
        self.assertEqual(f.count, 3)
        for n in (1, 2, 3):
            response = yield self.client.get(self.url(f"/resumable?{queryString(f.params(RESUMABLE, n))}"))
            yield response.content()
            self.assertEqual(response.code, 204)
            # A cached answer to a test would skip or repeat chunks.
            self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])
            status, text = yield self.send(RESUMABLE, f, n)
            self.assertEqual(status, 200)
            answer = json.loads(text)
            self.assertEqual(answer["chunk"], n)
            self.assertEqual(answer["complete"], n == 3)
            status, _ = yield self.test(RESUMABLE, f, n)
            self.assertEqual(status, 200)
        info = self.assertCompleted(RESUMABLE, f)
        self.assertEqual(info["filename"], "photo.jpg")
        self.assertEqual(info["clientFilename"], "photo.jpg")
        self.assertEqual(info["protocol"], "resumable")
        self.assertEqual(info["type"], "application/octet-stream")
        self.assertEqual(info["identifier"], f.identifier)

    @defer.inlineCallbacks
    def test_flowFieldsOnlyBeforeTheFilePart(self) -> Any:
        f = sample(4500, name="notes.txt", type="text/plain", relativePath="docs/notes.txt")
        for n in (4, 2, 1, 3):
            status, _ = yield self.test(FLOW, f, n)
            self.assertEqual(status, 204)
            status, _ = yield self.send(FLOW, f, n)
            self.assertEqual(status, 200)
        info = self.assertCompleted(FLOW, f)
        self.assertEqual((info["relativePath"], info["protocol"], info["type"]), ("docs/notes.txt", "flow", None))

    @defer.inlineCallbacks
    def test_octetModeWithPut(self) -> Any:
        for dialect in (RESUMABLE, FLOW):
            f = sample(2500, name=f"{dialect.name}.bin", type="image/png")
            yield self.uploadAll(dialect, f, [2, 1], octet=True, method="PUT")
            self.assertCompleted(dialect, f)

    @defer.inlineCallbacks
    def test_octetModeWithPost(self) -> Any:
        f = sample(2500, type="")
        yield self.uploadAll(FLOW, f, octet=True)
        self.assertCompleted(FLOW, f)

    @defer.inlineCallbacks
    def test_multipartWithPut(self) -> Any:
        f = sample(2500)
        yield self.uploadAll(RESUMABLE, f, method="PUT")
        self.assertCompleted(RESUMABLE, f)

    @defer.inlineCallbacks
    def test_bothDialectsKeepSeparateUploads(self) -> Any:
        f = sample(1500, identifier="same-id")
        g = ClientFile(randomBytes(1500), 1000, "same-id", "photo.jpg")
        yield self.uploadAll(RESUMABLE, f)
        yield self.uploadAll(FLOW, g)
        self.assertCompleted(RESUMABLE, f)
        self.assertCompleted(FLOW, g)

    @defer.inlineCallbacks
    def test_bigChunksStreamThroughFlowControl(self) -> Any:
        f = sample(5 * 1024 * 1024 + 12345, chunkSize=1024 * 1024)
        yield self.uploadAll(RESUMABLE, f, [5, 3, 1, 4, 2])
        self.assertCompleted(RESUMABLE, f)
        self.assertEqual(self.disk.queued, 0)

    @defer.inlineCallbacks
    def test_trailingSlashMount(self) -> Any:
        f = sample(10)
        body = formData(f.params(FLOW, 1), "file", f.filename, f.data)
        r = yield self.client.post(self.url("/flow/"), data=body, headers={"Content-Type": MULTIPART})
        yield r.content()
        self.assertEqual(r.code, 200)
        self.assertCompleted(FLOW, f)

    @defer.inlineCallbacks
    def test_optionsAndOtherMethods(self) -> Any:
        r = yield self.client.request("OPTIONS", self.url("/resumable"))
        yield r.content()
        self.assertEqual(r.code, 200)
        r = yield self.client.delete(self.url("/resumable"))
        yield r.content()
        self.assertEqual(r.code, 405)
        r = yield self.client.post(self.url("/resumable/elsewhere"), data=b"x")
        yield r.content()
        self.assertIn(r.code, (404, 405))  # (the app-wide OPTIONS route makes it 405)
        self.assertNothingStored()


class ConfiguredPathsTests(ChunkTestCase):
    overrides = {"resumable.path": "/api/upload", "flow.path": "/api/flow",
                 "flow.file_field": "chunk", "complete.directory": ""}

    @defer.inlineCallbacks
    def test_mountsAndFileFieldFromConfig(self) -> Any:
        f = sample(1200)
        yield self.uploadAll(RESUMABLE, f)
        self.assertCompleted(RESUMABLE, f)
        g = sample(1200, identifier="flow-one")
        body = formData(g.params(FLOW, 1), "chunk", g.filename, g.data)
        r = yield self.client.post(self.url("/api/flow"), data=body, headers={"Content-Type": MULTIPART})
        yield r.content()
        self.assertEqual(r.code, 200)
        self.assertCompleted(FLOW, g)
        r = yield self.client.get(self.url("/resumable?" + queryString(f.params(RESUMABLE, 1))))
        yield r.content()
        self.assertIn(r.code, (404, 405))  # nothing is mounted at the default path any more


class CompletedDirectoryTests(ChunkTestCase):
    def setUp(self) -> Any:
        self.elsewhere = tempfile.mkdtemp(prefix="chunkd-complete-")
        self.addCleanup(shutil.rmtree, self.elsewhere, True)
        self.overrides = {"complete.directory": self.elsewhere}
        return super().setUp()

    @defer.inlineCallbacks
    def test_completedFilesGoWhereConfigured(self) -> Any:
        f = sample(1234)
        yield self.uploadAll(FLOW, f)
        uploadId = uploadIdFor(FLOW, f.identifier)
        with open(os.path.join(self.elsewhere, uploadId), "rb") as data:
            self.assertEqual(data.read(), f.data)
        self.assertTrue(os.path.exists(os.path.join(self.elsewhere, uploadId + ".json")))


# -- geometry: sizes at every boundary, both modes ---------------------------------------------


class GeometryOnTheWireTests(ChunkTestCase):
    @defer.inlineCallbacks
    def test_emptyFile(self) -> Any:
        for dialect in (RESUMABLE, FLOW):
            for octet in (False, True):
                f = sample(0, identifier=f"0-empty-{octet}")
                self.assertEqual(f.count, 1)
                status, _ = yield self.test(dialect, f, 1)
                self.assertEqual(status, 204)
                status, text = yield self.send(dialect, f, 1, octet=octet)
                self.assertEqual((status, json.loads(text)["complete"]), (200, True))
                info = self.assertCompleted(dialect, f)
                self.assertEqual(info["sha256"], hashlib.sha256(b"").hexdigest())
                status, _ = yield self.test(dialect, f, 1)
                self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_emptyFileForcedChunkSize(self) -> Any:
        f = sample(0, force=True)
        self.assertEqual(f.count, 1)
        yield self.uploadAll(FLOW, f)
        self.assertCompleted(FLOW, f)

    @defer.inlineCallbacks
    def test_fileSmallerThanOneChunk(self) -> Any:
        for force in (False, True):
            f = sample(999, identifier=f"small-{force}", force=force)
            self.assertEqual(f.count, 1)
            status, _ = yield self.send(RESUMABLE, f, 1)
            self.assertEqual(status, 200)
            self.assertCompleted(RESUMABLE, f)

    @defer.inlineCallbacks
    def test_lastChunkBetweenCAnd2CMinus1(self) -> Any:
        for size in (1000, 1999, 2000, 3999, 3000 + 1):
            f = sample(size, identifier=f"last-{size}")
            last = len(f.bytesOf(f.count))
            self.assertTrue(1000 <= last <= 1999, (size, last))
            yield self.uploadAll(FLOW, f, list(range(f.count, 0, -1)))
            self.assertCompleted(FLOW, f)

    @defer.inlineCallbacks
    def test_forceChunkSizeMode(self) -> Any:
        f = sample(3700, force=True)
        self.assertEqual((f.count, len(f.bytesOf(4))), (4, 700))
        yield self.uploadAll(RESUMABLE, f, [4, 1, 3, 2])
        self.assertCompleted(RESUMABLE, f)

    @defer.inlineCallbacks
    def test_exactMultipleIsTheSameInBothModes(self) -> Any:
        f = sample(3000, force=True)
        g = ClientFile(f.data, 1000, f.identifier, f.filename, force=False)
        self.assertEqual(f.count, g.count)
        yield self.send(FLOW, f, 1)
        yield self.uploadAll(FLOW, g, [2, 3])
        self.assertCompleted(FLOW, f)

    @defer.inlineCallbacks
    def test_laterChunkWithTheOtherModesCountIs400(self) -> Any:
        floor = sample(3700)
        ceil = ClientFile(floor.data, 1000, floor.identifier, floor.filename, force=True)
        status, _ = yield self.send(RESUMABLE, floor, 1)
        self.assertEqual(status, 200)
        status, text = yield self.send(RESUMABLE, ceil, 4)
        self.assertEqual(status, 400)
        self.assertIn(b"resumableTotalChunks differs", text)
        status, _ = yield self.test(RESUMABLE, ceil, 1)
        self.assertEqual(status, 400)


# -- out of order, at once, twice, cut off -------------------------------------------------------


def rawChunk(dialect: Dialect, f: ClientFile, number: int, mount: str, cut: Optional[int] = None) -> bytes:
    """
    A whole multipart chunk request as raw bytes (optionally only its first
    C{cut} bytes of body).
    """
    params = f.params(dialect, number)
    body = formData(params, "file", f.filename, f.bytesOf(number))
    target = f"{mount}?{queryString(params)}" if dialect is RESUMABLE else mount
    head = (f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: {MULTIPART}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head + (body if cut is None else body[:cut])


class ConcurrencyTests(ChunkTestCase):
    @defer.inlineCallbacks
    def test_allChunksAtOnceOutOfOrderCompleteOnce(self) -> Any:
        f = sample(12 * 1000 + 1, name="movie.mp4")
        order = [7, 12, 1, 3, 11, 2, 5, 9, 4, 10, 6, 8]
        results = yield defer.gatherResults([self.send(FLOW, f, n) for n in order])
        self.assertEqual([status for status, _ in results], [200] * 12)
        self.assertEqual(sum(json.loads(text)["complete"] for _, text in results), 1)
        self.assertCompleted(FLOW, f)
        self.assertEqual(sorted(os.listdir(self.completedDir())),
                         sorted([uploadIdFor(FLOW, f.identifier), uploadIdFor(FLOW, f.identifier) + ".json"]))

    @defer.inlineCallbacks
    def test_firstChunksRaceToCreate(self) -> Any:
        for attempt in range(5):
            f = sample(3000, identifier=f"race-{attempt}")
            results = yield defer.gatherResults([self.send(RESUMABLE, f, n) for n in (1, 2, 3)])
            self.assertEqual([s for s, _ in results], [200, 200, 200])
            self.assertCompleted(RESUMABLE, f)

    @defer.inlineCallbacks
    def test_chunksInFlightNeverMakeOthersWait(self) -> Any:
        """
        flow.js does not retry a 503: chunks of one upload in flight at once,
        and a repeat of a chunk still being written, are all served.
        """
        f = sample(4000)
        port = self.port.getHost().port
        yield self.send(FLOW, f, 4)
        # Chunk 1 starts and stalls halfway (its connection stays open).
        slow = rawRequest(port, rawChunk(FLOW, f, 1, "/flow", cut=600), closeAfter=1.0)
        yield deferLater(0.2)
        results = yield defer.gatherResults([self.send(FLOW, f, n) for n in (2, 1, 3)])
        self.assertEqual([s for s, _ in results], [200, 200, 200])
        self.assertTrue(json.loads(results[-1][1])["complete"] or json.loads(results[1][1])["complete"]
                        or json.loads(results[0][1])["complete"])
        yield slow
        self.assertCompleted(FLOW, f)

    @defer.inlineCallbacks
    def test_duplicateChunk(self) -> Any:
        f = sample(3000)
        for n in (2, 2, 1, 2):
            status, text = yield self.send(RESUMABLE, f, n)
            self.assertEqual((status, json.loads(text)["complete"]), (200, False))
        uploadId = uploadIdFor(RESUMABLE, f.identifier)
        self.assertEqual(self.dataOf(uploadId)[:2000], f.data[:2000])
        yield self.send(RESUMABLE, f, 3)
        self.assertCompleted(RESUMABLE, f)

    @defer.inlineCallbacks
    def test_duplicateChunksAtOnce(self) -> Any:
        f = sample(2000)
        yield self.send(RESUMABLE, f, 1)
        results = yield defer.gatherResults([self.send(RESUMABLE, f, 2) for _ in range(4)])
        self.assertEqual([s for s, _ in results], [200] * 4)
        self.assertCompleted(RESUMABLE, f)
        self.assertEqual(len(os.listdir(self.completedDir())), 2)

    @defer.inlineCallbacks
    def test_chunkCutOffHalfwayIsNotStored(self) -> Any:
        for dialect in (RESUMABLE, FLOW):
            f = sample(3000, identifier=f"cut-{dialect.name}")
            yield self.send(dialect, f, 1)
            mount = self.mountOf(dialect)
            yield rawRequest(self.port.getHost().port, rawChunk(dialect, f, 2, mount, cut=700), closeAfter=0.2)
            yield deferLater(0.2)
            status, _ = yield self.test(dialect, f, 2)
            self.assertEqual(status, 204)
            record = self.store.get(uploadIdFor(dialect, f.identifier))
            self.assertNotEqual(record.state, COMPLETE)
            yield self.uploadAll(dialect, f, [3, 2])
            self.assertCompleted(dialect, f)

    @defer.inlineCallbacks
    def test_octetChunkCutOffIsNotStored(self) -> Any:
        f = sample(2000)
        params = f.params(RESUMABLE, 1)
        head = (f"PUT /resumable?{queryString(params)} HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n").encode()
        yield rawRequest(self.port.getHost().port, head + f.bytesOf(1)[:400], closeAfter=0.2)
        yield deferLater(0.2)
        status, _ = yield self.test(RESUMABLE, f, 1)
        self.assertEqual(status, 204)

    @defer.inlineCallbacks
    def test_lateChunksAndTestsAfterCompletionGet200(self) -> Any:
        f = sample(2000)
        yield self.uploadAll(FLOW, f)
        before = self.completed(FLOW, f)
        status, text = yield self.send(FLOW, f, 1, body=b"z" * 1000)
        self.assertEqual((status, json.loads(text)["complete"]), (200, True))
        for n in (1, 2):
            status, _ = yield self.test(FLOW, f, n)
            self.assertEqual(status, 200)
        self.assertEqual(self.completed(FLOW, f), before)  # untouched

    @defer.inlineCallbacks
    def test_completedUploadSurvivesARestart(self) -> Any:
        f = sample(2000)
        yield self.uploadAll(RESUMABLE, f)
        self.store.reconcile()
        status, _ = yield self.test(RESUMABLE, f, 2)
        self.assertEqual(status, 200)
        status, _ = yield self.send(RESUMABLE, f, 1)
        self.assertEqual(status, 200)
        self.assertEqual(len(os.listdir(self.completedDir())), 2)

    @defer.inlineCallbacks
    def test_partialUploadSurvivesARestart(self) -> Any:
        f = sample(3000)
        yield self.send(FLOW, f, 2)
        self.store.reconcile()
        for n, expected in ((1, 204), (2, 200), (3, 204)):
            status, _ = yield self.test(FLOW, f, n)
            self.assertEqual(status, expected)
        yield self.uploadAll(FLOW, f, [1, 3])
        self.assertCompleted(FLOW, f)


class EventTests(ChunkTestCase):
    """
    What an application hears through the store's events (webhooks,
    metrics): one post-finish per upload, once its file is published.
    """

    @defer.inlineCallbacks
    def test_onePostFinishAfterPublication(self) -> Any:
        heard: List[Tuple[str, str, Any, Any, bool]] = []

        def listen(event: str, record: Any) -> None:
            path = record.published.path if record.published else None
            heard.append((event, record.id, path, record.published.sha256 if record.published else None,
                          bool(path) and os.path.exists(path + ".json")))

        self.store.events.subscribe(listen)
        files = [(RESUMABLE, sample(5000, identifier="five")), (FLOW, sample(0, identifier="empty"))]
        for dialect, f in files:
            yield defer.gatherResults([self.send(dialect, f, n) for n in range(f.count, 0, -1)])
            yield defer.gatherResults([self.send(dialect, f, n) for n in range(1, f.count + 1)])
        yield deferLater(0.05)  # the store emits from the disk pool via the reactor
        for dialect, f in files:
            uploadId = uploadIdFor(dialect, f.identifier)
            finished = [h for h in heard if h[0] == "post-finish" and h[1] == uploadId]
            self.assertEqual(len(finished), 1, heard)
            _, _, path, sha256, published = finished[0]
            self.assertEqual((path, sha256, published),
                             (os.path.join(self.completedDir(), uploadId),
                              hashlib.sha256(f.data).hexdigest(), True))
            self.assertEqual([h[0] for h in heard if h[1] == uploadId], ["post-create", "post-finish"])


class CreationRaceTests(ChunkTestCase):
    @defer.inlineCallbacks
    def test_anotherProcessCreatingTheUploadFirst(self) -> Any:
        """
        The data file exists (O_EXCL lost) and its record follows shortly:
        the chunk waits for the record and is written.
        """
        f = sample(2000)
        uploadId = uploadIdFor(RESUMABLE, f.identifier)
        os.close(os.open(self.store.dataPath(uploadId), os.O_WRONLY | os.O_CREAT, 0o640))
        from twisted.internet import reactor

        def otherProcessCreates() -> None:
            os.unlink(self.store.dataPath(uploadId))
            self.store.create("resumable", 2000, None, uploadId=uploadId, extra={
                "totalSize": 2000, "identifier": f.identifier, "filename": f.filename,
                "relativePath": f.filename, "type": "", "chunkSize": 1000, "totalChunks": 2,
                "chunkMap": "AA==",
            })

        reactor.callLater(0.3, otherProcessCreates)
        yield self.uploadAll(RESUMABLE, f)
        self.assertCompleted(RESUMABLE, f)

    @defer.inlineCallbacks
    def test_orphanedDataFileIsReplaced(self) -> Any:
        self.patch(ChunkProtocol, "creationWait", 0.2)
        f = sample(2000)
        uploadId = uploadIdFor(FLOW, f.identifier)
        os.close(os.open(self.store.dataPath(uploadId), os.O_WRONLY | os.O_CREAT, 0o640))
        status, _ = yield self.send(FLOW, f, 1)
        self.assertEqual(status, 503)  # transient: Resumable.js retries, and so does a user
        yield self.uploadAll(FLOW, f)
        self.assertCompleted(FLOW, f)


# -- invalid chunks: 400, never 404 or 500, nothing recorded ----------------------------------------------


class ValidationTests(ChunkTestCase):
    overrides = {"limits.max_size": 50000, "flow.max_chunks": 10}

    @defer.inlineCallbacks
    def assertRefused(self, dialect: Dialect, f: ClientFile, number: int = 1, expected: int = 400,
                      **override: Any) -> Any:
        for octet in (False, True):
            status, text = yield self.send(dialect, f, number, octet=octet, **override)
            self.assertEqual(status, expected, (override, octet, text))
        status, text = yield self.test(dialect, f, number, **override)
        self.assertEqual(status, expected, (override, "test", text))
        return text

    @defer.inlineCallbacks
    def test_missingParameters(self) -> Any:
        f = sample(2500)
        for name in ("ChunkNumber", "ChunkSize", "CurrentChunkSize", "TotalSize", "Identifier",
                     "Filename", "TotalChunks"):
            for dialect in (RESUMABLE, FLOW):
                text = yield self.assertRefused(dialect, f, **{name: None})
                self.assertIn((dialect.prefix + name).encode(), text)
                yield self.assertRefused(dialect, f, **{name: ""})
        self.assertNothingStored()

    @defer.inlineCallbacks
    def test_optionalParameters(self) -> Any:
        f = sample(1500)
        yield self.uploadAll(RESUMABLE, f, RelativePath=None, Type=None)
        info = self.assertCompleted(RESUMABLE, f)
        self.assertEqual((info["relativePath"], info["type"]), ("photo.jpg", None))

    @defer.inlineCallbacks
    def test_nonNumericAndNegativeNumbers(self) -> Any:
        f = sample(2500)
        for name in ("ChunkNumber", "ChunkSize", "CurrentChunkSize", "TotalSize", "TotalChunks"):
            for value in ("abc", "-1", "1.5", " 1", "1e3", "0x10", "99999999999999999999", "２"):
                yield self.assertRefused(FLOW, f, **{name: value})
        self.assertNothingStored()

    @defer.inlineCallbacks
    def test_zeroes(self) -> Any:
        f = sample(2500)
        for name in ("ChunkNumber", "ChunkSize", "TotalChunks"):
            yield self.assertRefused(RESUMABLE, f, **{name: 0})
        self.assertNothingStored()

    @defer.inlineCallbacks
    def test_chunkNumberPastTheCount(self) -> Any:
        f = sample(2500)
        text = yield self.assertRefused(RESUMABLE, f, number=2, ChunkNumber=3)
        self.assertIn(b"past the last chunk", text)
        self.assertNothingStored()

    @defer.inlineCallbacks
    def test_chunkCountThatNoClientComputes(self) -> Any:
        f = sample(2500)  # 2 (floor) or 3 (ceil)
        for count in (1, 4, 9):
            text = yield self.assertRefused(FLOW, f, TotalChunks=count)
        self.assertIn(b"make 2 or 3", text)
        self.assertNothingStored()

    @defer.inlineCallbacks
    def test_currentChunkSizeAgainstTheGeometry(self) -> Any:
        f = sample(2500)
        for n, wrong in ((1, 999), (1, 1500), (2, 1000), (2, 1499)):
            yield self.assertRefused(RESUMABLE, f, number=n, CurrentChunkSize=wrong)
        self.assertNothingStored()

    @defer.inlineCallbacks
    def test_bodyShorterOrLongerThanCurrentChunkSize(self) -> Any:
        for dialect in (RESUMABLE, FLOW):
            f = sample(2500, identifier=f"body-{dialect.name}")
            for body in (f.bytesOf(1)[:999], f.bytesOf(1) + b"x", b""):
                for octet in (False, True):
                    status, text = yield self.send(dialect, f, 1, octet=octet, body=body)
                    self.assertEqual(status, 400, (dialect, len(body), octet, text))
                status, _ = yield self.test(dialect, f, 1)
                self.assertEqual(status, 204)
            yield self.uploadAll(dialect, f)
            self.assertCompleted(dialect, f)

    @defer.inlineCallbacks
    def test_chunkedBodyTooLongIsNotRecorded(self) -> Any:
        f = sample(2000)
        body = f.bytesOf(1) + b"extra"
        head = (f"PUT /resumable?{queryString(f.params(RESUMABLE, 1))} HTTP/1.1\r\nHost: x\r\n"
                f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
        raw = yield rawRequest(self.port.getHost().port,
                               head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        self.assertEqual(parseResponse(raw)[0], 400)
        status, _ = yield self.test(RESUMABLE, f, 1)
        self.assertEqual(status, 204)

    @defer.inlineCallbacks
    def test_laterChunkDisagreeingWithTheFirst(self) -> Any:
        f = sample(2500)
        yield self.send(FLOW, f, 1)
        other = ClientFile(f.data + b"x" * 1000, 1000, f.identifier, f.filename)
        for name, changed in (("TotalSize", ClientFile(f.data[:2400], 1000, f.identifier, f.filename)),
                              ("ChunkSize", ClientFile(f.data, 1250, f.identifier, f.filename)),
                              ("TotalChunks", ClientFile(f.data, 1000, f.identifier, f.filename, force=True)),
                              ("Filename", ClientFile(f.data, 1000, f.identifier, "other.jpg")),
                              ("TotalSize", other)):
            for number in (1, 2):
                status, text = yield self.send(FLOW, changed, number)
                self.assertEqual(status, 400, (name, number))
                self.assertIn(f"flow{name} differs".encode(), text)
                status, _ = yield self.test(FLOW, changed, number)
                self.assertEqual(status, 400)
        status, _ = yield self.test(FLOW, f, 2)
        self.assertEqual(status, 204)
        yield self.send(FLOW, f, 2)
        self.assertCompleted(FLOW, f)

    @defer.inlineCallbacks
    def test_totalSizeLimit(self) -> Any:
        f = ClientFile(b"\0" * 50001, 10000, "big", "big.iso")
        text = yield self.assertRefused(RESUMABLE, f)
        self.assertIn(b"limit of 50000 bytes", text)
        self.assertNothingStored()
        ok = ClientFile(randomBytes(50000), 10000, "fits", "fits.iso")
        yield self.uploadAll(RESUMABLE, ok)
        self.assertCompleted(RESUMABLE, ok)

    @defer.inlineCallbacks
    def test_chunkCountLimit(self) -> Any:
        f = sample(11000, chunkSize=1000)
        text = yield self.assertRefused(FLOW, f)
        self.assertIn(b"limit of 10 chunks", text)
        ok = sample(11000, chunkSize=1100, identifier="ten")
        yield self.uploadAll(FLOW, ok)  # the resumable section's limit is its own
        status, _ = yield self.send(RESUMABLE, f, 1)
        self.assertEqual(status, 200)
        self.assertEqual(len(os.listdir(self.completedDir())), 2)

    @defer.inlineCallbacks
    def test_conflictingQueryAndFormField(self) -> Any:
        f = sample(2000)
        params = f.params(RESUMABLE, 1)
        query = queryString([(k, "2" if k.endswith("ChunkNumber") else v) for k, v in params])
        body = formData(params, "file", f.filename, f.bytesOf(1))
        r = yield self.client.post(self.url(f"/resumable?{query}"), data=body, headers={"Content-Type": MULTIPART})
        text = yield r.content()
        self.assertEqual(r.code, 400)
        self.assertIn(b"given twice with different values", text)

    @defer.inlineCallbacks
    def test_malformedMultipart(self) -> Any:
        f = sample(2000)
        body = formData(f.params(FLOW, 1), "file", f.filename, f.bytesOf(1))
        for data, contentType in (
            (body[:-10], MULTIPART),  # no closing boundary
            (body, "multipart/form-data"),  # no boundary
            (formData(f.params(FLOW, 1), "upload", f.filename, f.bytesOf(1)), MULTIPART),  # no part "file"
        ):
            r = yield self.client.post(self.url("/flow"), data=data, headers={"Content-Type": contentType})
            yield r.content()
            self.assertEqual(r.code, 400)
        status, _ = yield self.test(FLOW, f, 1)
        self.assertEqual(status, 204)

    @defer.inlineCallbacks
    def test_contentLengthDisagreeingInOctetMode(self) -> Any:
        f = sample(2000)
        url = self.url(f"/resumable?{queryString(f.params(RESUMABLE, 1))}")
        r = yield self.client.put(url, data=b"x" * 10, headers={"Content-Type": "application/octet-stream"})
        text = yield r.content()
        self.assertEqual(r.code, 400)
        self.assertIn(b"body is 10 bytes", text)
        self.assertNothingStored()

    @defer.inlineCallbacks
    def test_queryThatIsNotUtf8(self) -> Any:
        r = yield self.client.get(self.url("/flow?flowFilename=%ff%fe"))
        yield r.content()
        self.assertEqual(r.code, 400)

    @defer.inlineCallbacks
    def test_bareGetIs400Not404(self) -> Any:
        for mount in ("/resumable", "/flow"):
            r = yield self.client.get(self.url(mount))
            yield r.content()
            self.assertEqual(r.code, 400)


# -- client text never becomes a path ------------------------------------------------------------------


class HostileNamesTests(ChunkTestCase):
    hostile = [
        "../../../../../../tmp/chunkd-escape",
        "/etc/passwd",
        "..\\..\\windows\\win.ini",
        "C:\\Windows\\system32",
        "a/../../b/./c",
        "....//....//x",
        "\u202eexe.jpg",
        "x" * 3000,
        "ünïcödé/名前.txt",
        "%2e%2e%2f%2e%2e%2fetc",
        ".",
        "..",
    ]

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        # The storage directory inside a directory of its own, so the test
        # can see that nothing lands beside it.
        self.parent = tempfile.mkdtemp(prefix="chunkd-hostile-")
        self.addCleanup(shutil.rmtree, self.parent, True)
        self.storage = os.path.join(self.parent, "storage")
        yield self.startServer({})

    def storageTree(self) -> List[str]:
        found = []
        for root, dirs, files in os.walk(self.storage):
            for name in files:
                found.append(os.path.relpath(os.path.join(root, name), self.storage))
        # chunkd's own space reserve (chunkd.store.RESERVE_SIZE) is no client's.
        return sorted(f for f in found if f != os.path.join("uploads", "reserve"))

    @defer.inlineCallbacks
    def test_hostileIdentifiersAndNamesStayInside(self) -> Any:
        files = []
        for i, text in enumerate(self.hostile):
            dialect = (RESUMABLE, FLOW)[i % 2]
            f = ClientFile(randomBytes(1500 + i), 1000, text, text, relativePath=text)
            yield self.uploadAll(dialect, f)
            info = self.assertCompleted(dialect, f)
            self.assertEqual(info["clientFilename"], text)
            self.assertNotIn("/", info["filename"])
            self.assertNotIn(info["filename"], ("", ".", ".."))
            self.assertLessEqual(len(info["filename"].encode()), 200)
            self.assertFalse(info["relativePath"].startswith("/"))
            self.assertNotIn("..", info["relativePath"].split("/"))
            files.append((dialect, f))
        hexes = {uploadIdFor(d, f.identifier) for d, f in files}
        for path in self.storageTree():
            directory, name = os.path.split(path)
            self.assertIn(directory, ("uploads", "complete"), path)
            self.assertIn(name.split(".")[0], hexes, path)
        self.assertEqual(os.listdir(self.parent), ["storage"])
        self.assertFalse(os.path.exists("/tmp/chunkd-escape"))

    @defer.inlineCallbacks
    def test_nulAndOverlongTextIs400(self) -> Any:
        for name, value in (("Identifier", "a\0b"), ("Filename", "a.txt\0.jpg"),
                            ("RelativePath", "x\0"), ("Identifier", "i" * 5000),
                            ("Filename", "f" * 5000)):
            f = ClientFile(b"abc", 1000, "id" if name != "Identifier" else value,
                           "n.txt" if name != "Filename" else value)
            for dialect in (RESUMABLE, FLOW):
                status, _ = yield self.send(dialect, f, 1, **{name: value})
                self.assertEqual(status, 400, (name, value[:10]))
        self.assertEqual(self.storageTree(), [])

    @defer.inlineCallbacks
    def test_recordMetadataIsSanitized(self) -> Any:
        f = ClientFile(b"abc", 1000, "m", "../../etc/shadow", relativePath="/abs/../dir/shadow")
        yield self.uploadAll(FLOW, f)
        record = self.store.get(uploadIdFor(FLOW, f.identifier))
        self.assertEqual(record.metadata["filename"], "shadow")
        self.assertEqual(record.metadata["relativePath"], "abs/dir/shadow")


# -- failures: full disk, failed completion --------------------------------------------------------------


class CompletionFailureTests(ChunkTestCase):
    @defer.inlineCallbacks
    def test_failedCompletionIsRetriedByTheNextRequest(self) -> Any:
        real = CompletedFiles.publish
        calls = []

        def failOnce(self: CompletedFiles, *args: Any, **kw: Any) -> str:
            calls.append(args)
            if len(calls) == 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, *args, **kw)

        self.patch(CompletedFiles, "publish", failOnce)
        f = sample(2000)
        yield self.send(FLOW, f, 1)
        status, _ = yield self.send(FLOW, f, 2)
        self.assertEqual(status, 507)
        record = self.store.get(uploadIdFor(FLOW, f.identifier))
        self.assertNotEqual(record.state, COMPLETE)
        status, _ = yield self.test(FLOW, f, 2)  # the chunk is stored; completing again works
        self.assertEqual(status, 200)
        self.assertCompleted(FLOW, f)
        status, _ = yield self.send(FLOW, f, 2)
        self.assertEqual(status, 200)
        self.assertEqual(len(calls), 2)


class CrashRecoveryTests(ChunkTestCase):
    """
    Completion cut short between its steps (as a crash would cut it) is
    finished by the next request, under the same name, exactly once.
    """

    def failRecordingCompletionOnce(self) -> List[str]:
        """
        Make the record update that marks an upload complete (after its file
        was published) fail once, as a crash at that moment would.

        @return: the ids it failed for (filled in as it happens).
        """
        from chunkd.store import UploadStore

        real = UploadStore.update
        failed: List[str] = []

        def failOnce(store: UploadStore, uploadId: str, mutate: Any) -> Any:
            if not failed and getattr(mutate, "__name__", "") == "recordPublication":
                failed.append(uploadId)
                return defer.fail(OSError(errno.ENOSPC, "No space left on device"))
            return real(store, uploadId, mutate)

        self.patch(UploadStore, "update", failOnce)
        return failed

    @defer.inlineCallbacks
    def test_publishedButNotRecorded(self) -> Any:
        failed = self.failRecordingCompletionOnce()
        f = sample(2000)
        yield self.send(RESUMABLE, f, 1)
        status, _ = yield self.send(RESUMABLE, f, 2)
        self.assertEqual((status, len(failed)), (507, 1))
        uploadId = uploadIdFor(RESUMABLE, f.identifier)
        self.assertFalse(os.path.exists(self.store.dataPath(uploadId)))  # moved, sidecar written
        self.assertNotEqual(self.store.get(uploadId).state, COMPLETE)
        self.store.reconcile()  # a restart now sees a record whose data is gone
        status, _ = yield self.test(RESUMABLE, f, 1)
        self.assertEqual(status, 200)
        status, text = yield self.send(RESUMABLE, f, 2)
        self.assertEqual((status, json.loads(text)["complete"]), (200, True))
        self.assertEqual(sorted(os.listdir(self.completedDir())), [uploadId, uploadId + ".json"])
        _, info = self.completed(RESUMABLE, f)
        self.assertEqual(info["sha256"], hashlib.sha256(f.data).hexdigest())

    @defer.inlineCallbacks
    def test_publishedButRecordLagsWithoutARestart(self) -> Any:
        self.failRecordingCompletionOnce()
        f = sample(1000)
        status, _ = yield self.send(FLOW, f, 1)
        self.assertEqual(status, 507)
        status, _ = yield self.test(FLOW, f, 1)  # adopts the publication
        self.assertEqual(status, 200)
        self.assertCompleted(FLOW, f)
        self.assertEqual(len(os.listdir(self.completedDir())), 2)

    @defer.inlineCallbacks
    def test_linkedButSourceNotRemoved(self) -> Any:
        real = CompletedFiles.publish

        def linkThenFail(completed: CompletedFiles, source: str, name: str, *args: Any, **kw: Any) -> str:
            os.link(source, os.path.join(completed.directory, name))
            self.patch(CompletedFiles, "publish", real)
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(CompletedFiles, "publish", linkThenFail)
        f = sample(2000)
        yield self.send(FLOW, f, 2)
        status, _ = yield self.send(FLOW, f, 1)
        self.assertEqual(status, 507)
        status, _ = yield self.send(FLOW, f, 1)
        self.assertEqual(status, 200)
        self.assertCompleted(FLOW, f)
        uploadId = uploadIdFor(FLOW, f.identifier)
        self.assertEqual(sorted(os.listdir(self.completedDir())), [uploadId, uploadId + ".json"])


class FullDiskTests(ChunkTestCase):
    """
    A real full disk: a 4 MiB tmpfs as the storage directory.
    """

    tmpfsSize = "4m"

    @defer.inlineCallbacks
    def test_fileLargerThanFreeSpaceIs507(self) -> Any:
        f = ClientFile(b"\0" * (64 * 1024 * 1024), 1024 * 1024, "huge", "huge.bin")
        status, _ = yield self.send(RESUMABLE, f, 1, octet=True)
        self.assertEqual(status, 507)
        # Nothing but the space reserve (chunkd.store.RESERVE_SIZE).
        self.assertEqual(os.listdir(os.path.join(self.storage, "uploads")), ["reserve"])
        g = sample(2000)
        yield self.uploadAll(RESUMABLE, g)
        self.assertCompleted(RESUMABLE, g)
