"""
tus-js-client (npm, its Node build) against chunkd as a real process.

Each test runs C{js/tus_node.mjs} for one scenario; the script reports what
the client said (success, progress, chunk completions) and every request it
made, and the test checks that against the file chunkd stored.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Dict, List

from twisted.internet import defer

from tests.helpers import uploadFiles
from tests.interop.harness import InteropTestCase, requireNode, sha256, sha256File

KiB = 1024
MiB = 1024 * 1024


def idOf(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def methods(report: Dict[str, Any]) -> List[str]:
    return [r["method"] for r in report["requests"]]


def head(url: str) -> int:
    request = urllib.request.Request(url, method="HEAD", headers={"Tus-Resumable": "1.0.0"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


class TusJsClientTests(InteropTestCase):
    def setUp(self) -> Any:
        requireNode(["tus-js-client"])
        return super().setUp()

    def tus(self, scenario: str, path: str, **args: Any) -> Any:
        return self.runNode("tus_node.mjs", dict(args, scenario=scenario, file=path,
                                                   endpoint=self.chunkd.url("/files/")))

    def assertSucceeded(self, report: Dict[str, Any], retried: "tuple[int, ...]" = ()) -> None:
        """
        The client said success, and every answer was a success (or one of
        C{retried}, the codes a client retries by design).
        """
        self.assertTrue(report["success"], f"tus-js-client failed: {report['error']}\n{json.dumps(report)[:3000]}"
                        f"\nchunkd log:\n{self.chunkd.log()[-3000:]}")
        self.assertEqual([r for r in report["requests"] if r["status"] not in (200, 201, 204) + retried], [])

    def assertStored(self, report: Dict[str, Any], data: bytes) -> str:
        uploadId = idOf(report["url"])
        self.assertEqual(sha256File(self.chunkd.uploadData(uploadId)), sha256(data))
        self.assertEqual(os.path.getsize(self.chunkd.uploadData(uploadId)), len(data))
        self.assertEqual(self.chunkd.uploadRecord(uploadId)["state"], "complete")
        return uploadId

    def assertProgress(self, report: Dict[str, Any], size: int) -> None:
        sent = [p[0] for p in report["progress"]]
        self.assertTrue(sent, "no progress events")
        self.assertEqual(sent, sorted(sent), "progress went backwards")
        self.assertEqual(report["progress"][-1], [size, size])

    @defer.inlineCallbacks
    def test_plainUpload(self) -> Any:
        size = 3 * MiB + 4321
        path, data = self.sourceFile(size)
        report = yield self.tus("plain", path, chunkSize=MiB)
        self.assertSucceeded(report)
        # One creation, then one PATCH per chunk, nothing else.
        self.assertEqual(methods(report), ["POST", "PATCH", "PATCH", "PATCH", "PATCH"])
        self.assertEqual(report["requests"][0]["sent"]["Upload-Length"], str(size))
        self.assertEqual([r["sent"]["Upload-Offset"] for r in report["requests"][1:]],
                         [str(n * MiB) for n in range(4)])
        self.assertEqual([c[1] for c in report["chunks"]], [MiB, 2 * MiB, 3 * MiB, size])
        self.assertProgress(report, size)
        uploadId = self.assertStored(report, data)
        self.assertEqual(self.chunkd.uploadRecord(uploadId)["metadata"]["filename"], "source.bin")

    @defer.inlineCallbacks
    def test_plainUploadFromStream(self) -> Any:
        size = 2 * MiB + 17
        path, data = self.sourceFile(size)
        report = yield self.tus("plain-stream", path, chunkSize=512 * KiB)
        self.assertSucceeded(report)
        self.assertEqual(methods(report), ["POST"] + ["PATCH"] * 5)
        self.assertProgress(report, size)
        self.assertStored(report, data)

    @defer.inlineCallbacks
    def test_resumeAfterAbortMidPatch(self) -> Any:
        """
        abort() in the middle of a PATCH body; a second client process finds
        the upload by its fingerprint in the same URL storage, asks HEAD for
        the offset (whatever part of the cut body reached the disk counts)
        and sends only the rest.
        """
        size = 6 * MiB + 999
        path, data = self.sourceFile(size)
        storage = os.path.join(self.tempDir(), "tus-urls.json")
        first = yield self.tus("abort", path, storage=storage, chunkSize=MiB, abortAt=2 * MiB + 300 * KiB)
        self.assertIsNone(first["error"])
        self.assertFalse(first["success"])
        self.assertTrue(first["aborted"])
        self.assertTrue(os.path.exists(storage))
        uploadId = idOf(first["url"])

        second = yield self.tus("resume", path, storage=storage, chunkSize=MiB)
        # Should chunkd still be finishing the cut PATCH when the resume
        # comes, a 423 (or a 409 after the offset moved) is retried: fine.
        self.assertSucceeded(second, retried=(409, 423))
        self.assertEqual(second["previous"], [first["url"]])
        self.assertEqual(idOf(second["url"]), uploadId)
        # Resumed, not restarted: no creation, a HEAD first, then PATCHes
        # from the offset the server reported.
        self.assertNotIn("POST", methods(second))
        self.assertEqual(second["requests"][0]["method"], "HEAD")
        resumedAt = int(second["requests"][0]["received"]["Upload-Offset"])
        self.assertGreaterEqual(resumedAt, 2 * MiB)
        self.assertLess(resumedAt, size)
        patches = [r for r in second["requests"] if r["method"] == "PATCH"]
        self.assertEqual(patches[0]["sent"]["Upload-Offset"], str(resumedAt))
        self.assertEqual(second["left"], 0, "fingerprint not removed on success")
        self.assertProgress(second, size)
        self.assertStored(second, data)

    @defer.inlineCallbacks
    def test_parallelUploadsConcatenation(self) -> Any:
        size = 4 * MiB + 3
        path, data = self.sourceFile(size)
        report = yield self.tus("parallel", path, parallel=4)
        self.assertSucceeded(report)
        posts = [r for r in report["requests"] if r["method"] == "POST"]
        partials = [r for r in posts if r["sent"].get("Upload-Concat") == "partial"]
        finals = [r for r in posts if r["sent"].get("Upload-Concat", "").startswith("final;")]
        self.assertEqual((len(partials), len(finals), len(posts)), (4, 1, 5))
        self.assertEqual(sum(int(r["sent"]["Upload-Length"]) for r in partials), size)
        named = finals[0]["sent"]["Upload-Concat"][len("final;"):].split()
        self.assertEqual(sorted(named), sorted(r["received"]["Location"] for r in partials))
        self.assertEqual(len([r for r in report["requests"] if r["method"] == "PATCH"]), 4)
        self.assertProgress(report, size)
        self.assertStored(report, data)

    @defer.inlineCallbacks
    def test_uploadDataDuringCreation(self) -> Any:
        size = 2 * MiB + 5
        path, data = self.sourceFile(size)
        report = yield self.tus("with-creation", path, chunkSize=MiB)
        self.assertSucceeded(report)
        self.assertEqual(methods(report), ["POST", "PATCH", "PATCH"])
        creation = report["requests"][0]
        self.assertEqual(creation["sent"]["Content-Type"], "application/offset+octet-stream")
        self.assertEqual(creation["received"]["Upload-Offset"], str(MiB))
        self.assertEqual(report["requests"][1]["sent"]["Upload-Offset"], str(MiB))
        self.assertProgress(report, size)
        self.assertStored(report, data)

    @defer.inlineCallbacks
    def test_uploadDataDuringCreationSmallFile(self) -> Any:
        """
        A file smaller than one chunk goes entirely in the creation POST.
        """
        size = 100 * KiB
        path, data = self.sourceFile(size)
        report = yield self.tus("with-creation", path, chunkSize=MiB)
        self.assertSucceeded(report)
        self.assertEqual(methods(report), ["POST"])
        self.assertEqual(report["requests"][0]["received"]["Upload-Offset"], str(size))
        self.assertStored(report, data)

    @defer.inlineCallbacks
    def test_uploadLengthDeferred(self) -> Any:
        size = 2 * MiB + 77
        path, data = self.sourceFile(size)
        report = yield self.tus("deferred", path, chunkSize=MiB)
        self.assertSucceeded(report)
        creation = report["requests"][0]
        self.assertEqual(creation["method"], "POST")
        self.assertEqual(creation["sent"].get("Upload-Defer-Length"), "1")
        self.assertNotIn("Upload-Length", creation["sent"])
        patches = [r for r in report["requests"] if r["method"] == "PATCH"]
        withLength = [r for r in patches if "Upload-Length" in r["sent"]]
        self.assertEqual(len(withLength), 1)
        self.assertEqual(withLength[0]["sent"]["Upload-Length"], str(size))
        self.assertEqual(patches[-1]["received"]["Upload-Offset"], str(size))
        self.assertEqual(report["progress"][-1][0], size)
        uploadId = self.assertStored(report, data)
        self.assertEqual(self.chunkd.uploadRecord(uploadId)["length"], size)

    @defer.inlineCallbacks
    def test_overridePatchMethod(self) -> Any:
        size = MiB + MiB // 2
        path, data = self.sourceFile(size)
        report = yield self.tus("override-patch", path, chunkSize=MiB)
        self.assertSucceeded(report)
        self.assertEqual(methods(report), ["POST", "POST", "POST"])
        for r in report["requests"][1:]:
            self.assertEqual(r["sent"]["X-HTTP-Method-Override"], "PATCH")
            self.assertEqual(r["status"], 204)
        self.assertProgress(report, size)
        self.assertStored(report, data)

    @defer.inlineCallbacks
    def test_terminationWithAbortTrue(self) -> Any:
        size = 3 * MiB
        path, data = self.sourceFile(size)
        report = yield self.tus("terminate", path, chunkSize=MiB)
        self.assertTrue(report["terminated"], report["error"])
        self.assertEqual(methods(report), ["POST", "PATCH", "DELETE"])
        self.assertEqual(report["requests"][-1]["status"], 204)
        self.assertFalse(report["success"])
        uploadId = idOf(report["url"])
        self.assertFalse(os.path.exists(self.chunkd.uploadData(uploadId)))
        self.assertIn(head(report["url"]), (404, 410))


class TusJsClientWithTokenTests(InteropTestCase):
    """
    tus-js-client sending a bearer token with its C{headers} option, to a
    chunkd that requires one: the upload belongs to the token's subject.
    """

    chunkdConfig = {"auth": {"required": True, "tokens": {"tus-js-client-token-0123456789": "node-user"}}}

    def setUp(self) -> Any:
        requireNode(["tus-js-client"])
        return super().setUp()

    @defer.inlineCallbacks
    def test_uploadWithToken(self) -> Any:
        size = 2 * MiB + 99
        path, data = self.sourceFile(size)
        report = yield self.runNode("tus_node.mjs", dict(
            scenario="plain", file=path, endpoint=self.chunkd.url("/files/"), chunkSize=MiB,
            headers={"Authorization": "Bearer tus-js-client-token-0123456789"}))
        self.assertTrue(report["success"], json.dumps(report)[:3000])
        uploadId = idOf(report["url"])
        self.assertEqual(sha256File(self.chunkd.uploadData(uploadId)), sha256(data))
        self.assertEqual(self.chunkd.uploadRecord(uploadId)["subject"], "node-user")

    @defer.inlineCallbacks
    def test_withoutTokenTheClientFails(self) -> Any:
        path, _ = self.sourceFile(1000)
        report = yield self.runNode("tus_node.mjs", dict(
            scenario="plain", file=path, endpoint=self.chunkd.url("/files/")))
        self.assertFalse(report["success"])
        self.assertEqual([r["status"] for r in report["requests"]], [401])
        self.assertEqual(uploadFiles(self.chunkd.storage), [])


class TusJsClientIetfDraftTests(InteropTestCase):
    """
    tus-js-client's IETF draft modes: C{ietf-draft-03} sends interop 5,
    C{ietf-draft-05} sends interop 6 (with application/partial-upload).
    Against the tus mount (diverted by the version header) and /rufh:
    upload, abort mid-way, resume from the stored URL in a new process,
    byte-exact.
    """

    modes = (("ietf-draft-03", "5", "/files/"), ("ietf-draft-05", "6", "/rufh/"))

    def setUp(self) -> Any:
        requireNode(["tus-js-client"])
        return super().setUp()

    def tus(self, mode: str, mount: str, scenario: str, path: str, **args: Any) -> Any:
        return self.runNode("tus_node.mjs", dict(args, scenario=scenario, file=path, protocol=mode,
                                                   endpoint=self.chunkd.url(mount)))

    def assertIetf(self, report: Dict[str, Any], version: str, data: bytes) -> str:
        self.assertTrue(report["success"], json.dumps(report)[:3000] + "\n" + self.chunkd.log()[-3000:])
        for r in report["requests"]:
            self.assertEqual(r["sent"].get("Upload-Draft-Interop-Version"), version, r)
            self.assertNotIn("Tus-Resumable", r["sent"])
        uploadId = idOf(report["url"])
        self.assertEqual(sha256File(self.chunkd.uploadData(uploadId)), sha256(data))
        record = self.chunkd.uploadRecord(uploadId)
        self.assertEqual((record["protocol"], record["state"]), ("ietf", "complete"))
        return uploadId

    @defer.inlineCallbacks
    def test_uploadInChunks(self) -> Any:
        for mode, version, mount in self.modes:
            size = 3 * MiB + 12345
            path, data = self.sourceFile(size, name=f"{mode}.bin")
            report = yield self.tus(mode, mount, "plain", path, chunkSize=MiB)
            self.assertIetf(report, version, data)
            self.assertEqual(methods(report), ["POST"] + ["PATCH"] * 4)
            patches = [r for r in report["requests"] if r["method"] == "PATCH"]
            self.assertEqual([p["sent"]["Upload-Complete"] for p in patches], ["?0", "?0", "?0", "?1"])
            self.assertEqual({p["status"] for p in patches}, {204})
            if version == "6":
                self.assertEqual({p["sent"]["Content-Type"] for p in patches}, {"application/partial-upload"})

    @defer.inlineCallbacks
    def test_abortThenResumeFromStoredURL(self) -> Any:
        for mode, version, mount in self.modes:
            size = 5 * MiB + 777
            path, data = self.sourceFile(size, name=f"resume-{mode}.bin")
            storage = os.path.join(self.tempDir(), "tus-urls.json")
            first = yield self.tus(mode, mount, "abort", path, storage=storage, chunkSize=MiB,
                                   abortAt=2 * MiB + 100 * KiB)
            self.assertTrue(first["aborted"], first)
            second = yield self.tus(mode, mount, "resume", path, storage=storage, chunkSize=MiB)
            self.assertEqual(second["previous"], [first["url"]])
            self.assertEqual(second["requests"][0]["method"], "HEAD")
            resumedAt = int(second["requests"][0]["received"]["Upload-Offset"])
            self.assertGreaterEqual(resumedAt, 2 * MiB)
            self.assertNotIn("POST", methods(second))
            self.assertIetf(second, version, data)

    @defer.inlineCallbacks
    def test_streamInputsLastPatchSaysIncompleteAndChunkdDoesNotGuess(self) -> Any:
        """
        Seen with tus-js-client 4.3.1: with an fs.ReadStream input spanning
        several chunks its last PATCH says Upload-Complete: ?0, and it
        reports success.  chunkd records what the client said -- every
        byte, upload not complete -- and does not guess otherwise.
        """
        size = 2 * MiB + 5
        path, data = self.sourceFile(size)
        report = yield self.tus("ietf-draft-05", "/rufh/", "plain-stream", path, chunkSize=MiB)
        patches = [r for r in report["requests"] if r["method"] == "PATCH"]
        uploadId = idOf(report["url"])
        record = self.chunkd.uploadRecord(uploadId)
        self.assertEqual(record["offset"], size)
        if report["version"] == "4.3.1":
            self.assertEqual(patches[-1]["sent"].get("Upload-Complete"), "?0")
        if patches[-1]["sent"].get("Upload-Complete") == "?0":
            self.assertEqual(record["state"], "active")
        else:  # a tus-js-client that fixed it
            self.assertEqual(record["state"], "complete")
        self.assertEqual(sha256File(self.chunkd.uploadData(uploadId)), sha256(data))
