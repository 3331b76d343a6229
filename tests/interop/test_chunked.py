"""
Resumable.js (npm resumablejs) and flow.js (npm @flowjs/flow.js) in
headless Chromium, driven by playwright-core, against chunkd's /resumable
and /flow endpoints, from a page on another origin.

Every scenario runs for both libraries.  The page builds its files from
random bytes (or takes a real directory from a webkitdirectory input),
reports their sha256, what the library said (fileSuccess, progress, errors)
and every XHR it made; the test checks the completed file chunkd published
against the source and the requests against the protocol contract
(protocols.md section 3).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional
from urllib.parse import parse_qsl, urlsplit

from twisted.internet import defer

from tests.interop.harness import BrowserTestCase, sha256File

KiB = 1024
C = 100 * KiB  # the chunk size the scenarios use


def contractChunks(size: int, chunkSize: int, force: bool) -> int:
    if force:
        return max(-(-size // chunkSize), 1)
    return max(size // chunkSize, 1)


def chunkSizes(size: int, chunkSize: int, force: bool) -> List[int]:
    n = contractChunks(size, chunkSize, force)
    return [chunkSize] * (n - 1) + [size - (n - 1) * chunkSize]


class ChunkedClientMixin:
    """
    The scenarios; subclasses name the library, its endpoint and its
    parameter prefix.
    """

    lib = ""
    path = ""
    prefix = ""
    libraries = {"resumable.js": "resumablejs/resumable.js", "flow.js": "@flowjs/flow.js/dist/flow.js"}
    packages = ("resumablejs", "@flowjs/flow.js")

    # -- running -------------------------------------------------------------

    def options(self, **extra: Any) -> Dict[str, Any]:
        options: Dict[str, Any] = {"chunkSize": C, "testChunks": True, "simultaneousUploads": 3}
        if self.lib == "flow":
            options["progressCallbacksInterval"] = 0
        options.update(extra)
        return options

    def upload(self, files: Optional[List[Dict[str, Any]]] = None, directory: Optional[str] = None,
            **spec: Any) -> "defer.Deferred[Dict[str, Any]]":
        spec = dict(spec, lib=self.lib, target=self.chunkd.url(self.path), files=files or [],
                    dirInput=directory is not None, timeoutMs=60000)
        spec.setdefault("options", self.options())
        return self.runPage("chunked.html", spec, directory=directory)  # type: ignore[attr-defined]

    # -- reading the report --------------------------------------------------

    def params(self, request: Dict[str, Any]) -> Dict[str, str]:
        """
        The chunk parameters of a request, from its query and form fields.
        """
        params = dict(parse_qsl(urlsplit(request["url"]).query, keep_blank_values=True))
        for key, value in (request.get("form") or {}).items():
            if isinstance(value, str):
                params[key] = value
        return params

    def p(self, params: Dict[str, str], name: str) -> str:
        return params[self.prefix + name]

    def requestsFor(self, result: Dict[str, Any], identifier: str, phase: Optional[str] = None,
                    method: Optional[str] = None) -> List[Dict[str, Any]]:
        out = []
        for r in result["requests"]:
            params = self.params(r)
            if params.get(self.prefix + "Identifier") != identifier:
                continue
            if phase is not None and r["phase"] != phase:
                continue
            if method is not None and r["method"] != method:
                continue
            out.append(dict(r, params=params))
        return out

    def published(self) -> Dict[str, Dict[str, Any]]:
        return {info.get("identifier"): info for info in self.chunkd.completedFiles()}  # type: ignore[attr-defined]

    def checkFiles(self, result: Dict[str, Any], force: bool = False, chunkSize: int = C,
                   method: str = "POST", roundIndex: int = 0) -> Dict[str, Dict[str, Any]]:
        """
        Every source file: the library said success, chunkd published the
        same bytes (sha256 of the file on disk and in the sidecar), and the
        chunks it sent follow the contract's geometry.
        """
        rnd = result["rounds"][roundIndex]
        brief = dict(rnd, progress=rnd["progress"][-5:])
        self.assertEqual(rnd["reason"], "all files ended", brief)  # type: ignore[attr-defined]
        self.assertEqual(rnd["error"], {}, brief)  # type: ignore[attr-defined]
        self.assertEqual(result["_browser"]["pageErrors"], [])  # type: ignore[attr-defined]
        published = self.published()
        byName = {}
        for source, info in zip(result["sources"], rnd["files"]):
            self.assertEqual(source["size"], info["size"])  # type: ignore[attr-defined]
            self.assertTrue(info["complete"], info)  # type: ignore[attr-defined]
            identifier = info["identifier"]
            self.assertIn(identifier, rnd["success"])  # type: ignore[attr-defined]
            self.assertIn(identifier, published, f"{identifier} not in the completed area: {list(published)}")  # type: ignore[attr-defined]
            sidecar = published[identifier]
            self.assertEqual(sha256File(sidecar["path"]), source["sha256"])  # type: ignore[attr-defined]
            self.assertEqual((sidecar["sha256"], sidecar["size"]), (source["sha256"], source["size"]))  # type: ignore[attr-defined]
            self.assertEqual(os.path.getsize(sidecar["path"]), source["size"])  # type: ignore[attr-defined]

            sizes = chunkSizes(source["size"], chunkSize, force)
            self.assertEqual(info["chunks"], len(sizes))  # type: ignore[attr-defined]
            uploads = [r for r in self.requestsFor(result, identifier, method=method) if r["status"] == 200]
            numbers = sorted(int(self.p(r["params"], "ChunkNumber")) for r in uploads)
            self.assertEqual(sorted(set(numbers)), list(range(1, len(sizes) + 1)))  # type: ignore[attr-defined]
            for r in uploads:
                n = int(self.p(r["params"], "ChunkNumber"))
                self.assertEqual(int(self.p(r["params"], "CurrentChunkSize")), sizes[n - 1])  # type: ignore[attr-defined]
                self.assertEqual(int(self.p(r["params"], "TotalChunks")), len(sizes))  # type: ignore[attr-defined]
                self.assertEqual(int(self.p(r["params"], "TotalSize")), source["size"])  # type: ignore[attr-defined]
                sent = r["bodySize"] if r["form"] is None else r["form"]["file"]["blob"]
                self.assertEqual(sent, sizes[n - 1])  # type: ignore[attr-defined]
            byName[source["name"]] = dict(info, sidecar=sidecar, uploads=uploads, sizes=sizes)
        return byName

    def assertProgress(self, result: Dict[str, Any], roundIndex: int = 0) -> None:
        rnd = result["rounds"][roundIndex]
        for f in rnd["files"]:
            if f["size"] or self.lib == "flow":
                self.assertEqual(f["progress"], 1, f)  # type: ignore[attr-defined]
        if self.lib == "resumable" and any(f["size"] == 0 for f in rnd["files"]):
            # Resumable.js 1.1.0 divides by the file size in a chunk's
            # progress: with an empty file in the list, progress() is NaN
            # (null in JSON) from start to end.  A client quirk.
            return
        progress = rnd["progress"]
        self.assertTrue(progress)  # type: ignore[attr-defined]
        self.assertEqual(progress[-1], 1)  # type: ignore[attr-defined]
        self.assertEqual(progress, sorted(progress))  # type: ignore[attr-defined]
        self.assertEqual(rnd["overall"], 1)  # type: ignore[attr-defined]

    def maxInFlight(self, requests: List[Dict[str, Any]]) -> int:
        edges = []
        for r in requests:
            if r.get("doneAt") is not None:
                edges += [(r["sentAt"], 1), (r["doneAt"], -1)]
        edges.sort(key=lambda e: (e[0], e[1]))
        level = peak = 0
        for _, step in edges:
            level += step
            peak = max(peak, level)
        return peak

    # -- scenarios -----------------------------------------------------------

    @defer.inlineCallbacks
    def test_sizesThreeAtOnce(self) -> Any:
        """
        An empty file, one partial chunk, and many chunks with an uneven
        tail (the last chunk between C and 2C), uploaded together three
        chunks at a time, each chunk tested first.
        """
        files = [{"name": "empty.bin", "size": 0}, {"name": "small.bin", "size": 40000},
                 {"name": "many.bin", "size": 7 * C + C // 2 + 13}]
        result = yield self.upload(files)
        checked = self.checkFiles(result)
        self.assertEqual(checked["empty.bin"]["sizes"], [0])  # type: ignore[attr-defined]
        self.assertEqual(checked["small.bin"]["sizes"], [40000])  # type: ignore[attr-defined]
        self.assertEqual(checked["many.bin"]["sizes"], [C] * 6 + [C + C // 2 + 13])  # type: ignore[attr-defined]
        for name, info in checked.items():
            # testChunks: one GET per chunk, each a miss (204) on a fresh
            # server, then exactly one upload per chunk.
            tests = self.requestsFor(result, info["identifier"], method="GET")
            self.assertEqual(sorted(int(self.p(r["params"], "ChunkNumber")) for r in tests),  # type: ignore[attr-defined]
                             list(range(1, len(info["sizes"]) + 1)))
            self.assertEqual({r["status"] for r in tests}, {204})  # type: ignore[attr-defined]
            self.assertEqual(len(self.requestsFor(result, info["identifier"], method="POST")), len(info["sizes"]))  # type: ignore[attr-defined]
        self.assertEqual(len(result["requests"]), 2 * (1 + 1 + 7))  # type: ignore[attr-defined]
        peak = self.maxInFlight(result["requests"])
        self.assertLessEqual(peak, 3)  # type: ignore[attr-defined]
        self.assertGreater(peak, 1)  # type: ignore[attr-defined]
        self.assertProgress(result)

    @defer.inlineCallbacks
    def test_forceChunkSize(self) -> Any:
        """
        forceChunkSize: true, so N = ceil(S/C) and the last chunk is short;
        first and last chunks first, so chunks arrive out of order.
        """
        files = [{"name": "forced.bin", "size": 5 * C + 100}, {"name": "exact.bin", "size": 3 * C}]
        result = yield self.upload(files, options=self.options(forceChunkSize=True, prioritizeFirstAndLastChunk=True))
        checked = self.checkFiles(result, force=True)
        self.assertEqual(checked["forced.bin"]["sizes"], [C] * 5 + [100])  # type: ignore[attr-defined]
        self.assertEqual(checked["exact.bin"]["sizes"], [C] * 3)  # type: ignore[attr-defined]
        order = [int(self.p(r["params"], "ChunkNumber")) for r in checked["forced.bin"]["uploads"]]
        self.assertNotEqual(order, sorted(order))  # type: ignore[attr-defined]
        self.assertProgress(result)

    @defer.inlineCallbacks
    def test_pauseAndResume(self) -> Any:
        """
        pause() a third of the way through (in-flight chunks are aborted),
        nothing is sent while paused, and the upload completes after resume
        with every chunk stored once the file is done.
        """
        files = [{"name": "long.bin", "size": 30 * C + 777}]
        result = yield self.upload(files, pauseAt=0.3, pauseMs=800)
        checked = self.checkFiles(result)
        rnd = result["rounds"][0]
        self.assertIsNotNone(rnd["paused"])  # type: ignore[attr-defined]
        self.assertGreaterEqual(rnd["paused"], 0.3)  # type: ignore[attr-defined]
        self.assertLess(rnd["paused"], 1)  # type: ignore[attr-defined]
        names = [e["event"] for e in result["events"]]
        self.assertIn("resumed", names, [(e["event"], e["at"]) for e in result["events"]])  # type: ignore[attr-defined]
        self.assertLess(names.index("paused"), names.index("resumed"))  # type: ignore[attr-defined]
        self.assertLess(names.index("resumed"), names.index("fileSuccess"))  # type: ignore[attr-defined]
        self.assertEqual([r for r in result["requests"] if r["phase"] == "paused"], [])  # type: ignore[attr-defined]
        identifier = checked["long.bin"]["identifier"]
        before = {int(self.p(r["params"], "ChunkNumber")) for r in self.requestsFor(result, identifier, "first")
                  if r["method"] == "POST" and r["status"] == 200}
        after = {int(self.p(r["params"], "ChunkNumber")) for r in self.requestsFor(result, identifier, "resumed")
                 if r["method"] == "POST" and r["status"] == 200}
        self.assertTrue(before and after, (before, after))  # type: ignore[attr-defined]
        self.assertEqual(before | after, set(range(1, 31)))  # type: ignore[attr-defined]
        # The pause cut chunks in flight (aborted in the browser); each of
        # them was sent again after the resume and stored then.
        aborted = {int(self.p(r["params"], "ChunkNumber")) for r in self.requestsFor(result, identifier, "first")
                   if r.get("aborted")}
        self.assertTrue(aborted, "nothing was in flight when the pause came")  # type: ignore[attr-defined]
        self.assertLessEqual(aborted, after)  # type: ignore[attr-defined]
        self.assertFalse(aborted & before)  # type: ignore[attr-defined]
        self.assertProgress(result)

    @defer.inlineCallbacks
    def test_secondUploadSkippedByTests(self) -> Any:
        """
        The same file again, from a new library instance: every test GET
        finds its chunk (200), no chunk is sent, the library still reports
        success, and chunkd completed the file only once.
        """
        files = [{"name": "again.bin", "size": 4 * C + 4321}]
        result = yield self.upload(files, repeat=True)
        checked = self.checkFiles(result)
        identifier = checked["again.bin"]["identifier"]
        second = self.requestsFor(result, identifier, phase="second")
        self.assertEqual([r["method"] for r in second], ["GET"] * 4)  # type: ignore[attr-defined]
        self.assertEqual({r["status"] for r in second}, {200})  # type: ignore[attr-defined]
        self.assertIn(identifier, result["rounds"][1]["success"])  # type: ignore[attr-defined]
        self.assertEqual(result["rounds"][1]["error"], {})  # type: ignore[attr-defined]
        self.assertEqual([e["event"] for e in result["events"] if e["round"] == "second"].count("fileSuccess"), 1)  # type: ignore[attr-defined]
        self.assertEqual(len([i for i in self.chunkd.completedFiles() if i.get("identifier") == identifier]), 1)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_octetPut(self) -> Any:
        """
        method: 'octet' with uploadMethod: 'PUT': the raw chunk is the body
        and the parameters are in the query.
        """
        files = [{"name": "raw.bin", "size": 6 * C + 5}, {"name": "tiny.bin", "size": 1}]
        result = yield self.upload(files, options=self.options(method="octet", uploadMethod="PUT"))
        checked = self.checkFiles(result, method="PUT")
        for info in checked.values():
            for r in info["uploads"]:
                self.assertIsNone(r["form"])  # type: ignore[attr-defined]
                if self.lib == "resumable":  # flow.js sends the Blob's own (empty) type
                    self.assertEqual(r["headers"].get("Content-Type"), "application/octet-stream")  # type: ignore[attr-defined]
        self.assertEqual([r for r in result["requests"] if r["method"] == "POST"], [])  # type: ignore[attr-defined]
        self.assertProgress(result)

    @defer.inlineCallbacks
    def test_directoryUpload(self) -> Any:
        """
        A folder picked through <input webkitdirectory>: every file carries
        its path inside the folder, and chunkd keeps it (sanitized) with the
        completed file.
        """
        root = os.path.join(self.tempDir(), "album")  # type: ignore[attr-defined]
        layout = {"cover.jpg": 3 * C + 11, "2024/summer/beach.mp4": 5 * C + C // 3, "2024/notes.txt": 999}
        for relative, size in layout.items():
            path = os.path.join(root, *relative.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(os.urandom(size))
        result = yield self.upload(directory=root)
        self.assertEqual(sorted(s["relativePath"] for s in result["sources"]),  # type: ignore[attr-defined]
                         sorted("album/" + r for r in layout))
        checked = self.checkFiles(result)
        self.assertEqual(len(checked), 3)  # type: ignore[attr-defined]
        for source, info in zip(result["sources"], result["rounds"][0]["files"]):
            self.assertEqual(info["relativePath"], source["relativePath"])  # type: ignore[attr-defined]
            sidecar = checked[source["name"]]["sidecar"]
            self.assertEqual(sidecar.get("clientRelativePath"), source["relativePath"])  # type: ignore[attr-defined]
            self.assertEqual(sidecar.get("relativePath"), source["relativePath"])  # type: ignore[attr-defined]
            with open(os.path.join(root, *source["relativePath"].split("/")[1:]), "rb") as f:
                import hashlib

                self.assertEqual(hashlib.sha256(f.read()).hexdigest(), source["sha256"])  # type: ignore[attr-defined]
            for r in checked[source["name"]]["uploads"]:
                self.assertEqual(self.p(r["params"], "RelativePath"), source["relativePath"])  # type: ignore[attr-defined]
        self.assertProgress(result)


class ResumableJsTests(ChunkedClientMixin, BrowserTestCase):
    lib = "resumable"
    path = "/resumable"
    prefix = "resumable"


class FlowJsTests(ChunkedClientMixin, BrowserTestCase):
    lib = "flow"
    path = "/flow"
    prefix = "flow"


class BearerTokenMixin:
    """
    The library sends a bearer token with its C{headers} option to a chunkd
    that requires one (the preflight for the Authorization header needs
    none): the file is published for the token's subject.  Runs the
    scenario helpers of L{ChunkedClientMixin} without its scenarios.
    """

    token = "browser-token-0123456789abcdef"
    chunkdConfig = {"auth": {"required": True, "tokens": {token: "browser-user"}}}
    lib = path = prefix = ""
    libraries = ChunkedClientMixin.libraries
    packages = ChunkedClientMixin.packages
    options = ChunkedClientMixin.options
    upload = ChunkedClientMixin.upload
    params = ChunkedClientMixin.params
    p = ChunkedClientMixin.p
    requestsFor = ChunkedClientMixin.requestsFor
    published = ChunkedClientMixin.published
    checkFiles = ChunkedClientMixin.checkFiles

    @defer.inlineCallbacks
    def test_uploadWithToken(self) -> Any:
        files = [{"name": "report.bin", "size": 3 * C + 77}]
        result = yield self.upload(files, options=self.options(
            headers={"Authorization": f"Bearer {self.token}"}))
        checked = self.checkFiles(result)
        self.assertEqual(checked["report.bin"]["sidecar"]["subject"], "browser-user")  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_withoutTokenNothingIsStored(self) -> Any:
        files = [{"name": "report.bin", "size": C + 1}]
        result = yield self.upload(files)
        self.assertNotEqual(result["rounds"][0]["error"], {})  # type: ignore[attr-defined]
        self.assertEqual({r["status"] for r in result["requests"]}, {401})  # type: ignore[attr-defined]
        self.assertEqual(self.chunkd.completedFiles(), [])  # type: ignore[attr-defined]


class ResumableJsTokenTests(BearerTokenMixin, BrowserTestCase):
    lib = "resumable"
    path = "/resumable"
    prefix = "resumable"


class FlowJsTokenTests(BearerTokenMixin, BrowserTestCase):
    lib = "flow"
    path = "/flow"
    prefix = "flow"
