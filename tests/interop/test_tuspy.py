"""
tuspy (PyPI) against chunkd as a real process.

tuspy is synchronous: it runs in a thread, and every HTTP call it makes
through C{requests} is recorded (method, headers, status) for the checks.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
from typing import Any, Dict, List

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests.interop.harness import InteropTestCase, sha256, sha256File

try:
    import requests
    from tusclient import client as tusclient
    from tusclient.storage import filestorage
except ImportError:  # pragma: no cover - tuspy is a test dependency
    tusclient = None

KiB = 1024
MiB = 1024 * 1024


def tuspyVersion() -> str:
    from importlib.metadata import version

    return version("tuspy")


class TuspyInteropTests(InteropTestCase):
    def setUp(self) -> Any:
        if tusclient is None:
            raise unittest.SkipTest("tuspy is not installed (pip install '.[test]')")
        self.calls: List[Dict[str, Any]] = []
        lock = threading.Lock()
        for method in ("post", "patch", "head", "delete"):
            original = getattr(requests, method)

            def recorded(url: str, *a: Any, _method: str = method.upper(), _original: Any = original,
                         **kw: Any) -> Any:
                kw.setdefault("timeout", 30)
                response = _original(url, *a, **kw)
                with lock:
                    self.calls.append({"method": _method, "url": url, "headers": dict(kw.get("headers") or {}),
                                       "length": len(kw.get("data") or b""), "status": response.status_code,
                                       "offset": response.headers.get("Upload-Offset")})
                return response

            self.patch(requests, method, recorded)
        return super().setUp()

    def idOf(self, url: str) -> str:
        return url.rstrip("/").rsplit("/", 1)[1]

    @defer.inlineCallbacks
    def test_chunkedUploadWithChecksum(self) -> Any:
        data = os.urandom(3 * MiB + 12345)
        chunk = 512 * KiB

        def upload() -> str:
            c = tusclient.TusClient(self.chunkd.url("/files/"))
            uploader = c.uploader(file_stream=io.BytesIO(data), chunk_size=chunk, upload_checksum=True,
                                  metadata={"filename": "clip.mp4"})
            uploader.upload()
            return str(uploader.url)

        url = yield threads.deferToThread(upload)
        uploadId = self.idOf(url)
        self.assertEqual(sha256File(self.chunkd.uploadData(uploadId)), sha256(data))
        record = self.chunkd.uploadRecord(uploadId)
        self.assertEqual((record["state"], record["metadata"]["filename"]), ("complete", "clip.mp4"))

        patches = [c for c in self.calls if c["method"] == "PATCH"]
        self.assertEqual([c["method"] for c in self.calls], ["POST"] + ["PATCH"] * 7)
        self.assertEqual([c["status"] for c in self.calls], [201] + [204] * 7)
        self.assertEqual(patches[-1]["offset"], str(len(data)))
        # Every PATCH carried the digest of its own body, and chunkd took it.
        for n, call in enumerate(patches):
            algorithm, digest = call["headers"]["upload-checksum"].split(" ")
            body = data[n * chunk:(n + 1) * chunk]
            self.assertEqual(base64.b64decode(digest), hashlib.new(algorithm, body).digest())

    @defer.inlineCallbacks
    def test_resumeFromStoredUrl(self) -> Any:
        """
        A first client stores the upload URL (tuspy's file URL storage, keyed
        by the file's fingerprint), sends two chunks and stops; a second
        client with the same storage finds the URL, asks HEAD for the offset
        and sends the rest, without creating a new upload.
        """
        # A path, not a stream: tuspy 1.1 closes a file_stream while it
        # computes the fingerprint for the URL storage.
        path, data = self.sourceFile(2 * MiB + 333, "movie.mov")
        chunk = 256 * KiB
        storagePath = os.path.join(self.tempDir(), "tuspy-urls.json")

        def firstPart() -> str:
            storage = filestorage.FileStorage(storagePath)
            try:
                c = tusclient.TusClient(self.chunkd.url("/files/"))
                uploader = c.uploader(file_path=path, chunk_size=chunk, store_url=True, url_storage=storage)
                uploader.upload_chunk()
                uploader.upload_chunk()
                return str(uploader.url)
            finally:
                storage.close()

        def resume() -> "tuple[str, int]":
            storage = filestorage.FileStorage(storagePath)
            try:
                c = tusclient.TusClient(self.chunkd.url("/files/"))
                uploader = c.uploader(file_path=path, chunk_size=chunk, store_url=True, url_storage=storage,
                                      upload_checksum=True)
                start = uploader.offset
                uploader.upload()
                return str(uploader.url), start
            finally:
                storage.close()

        url = yield threads.deferToThread(firstPart)
        first = len(self.calls)
        self.assertEqual([c["method"] for c in self.calls], ["POST", "PATCH", "PATCH"])

        resumedUrl, start = yield threads.deferToThread(resume)
        self.assertEqual(resumedUrl, url)
        self.assertEqual(start, 2 * chunk)
        second = self.calls[first:]
        self.assertEqual([c["method"] for c in second], ["HEAD"] + ["PATCH"] * 7)
        self.assertEqual(second[0]["offset"], str(2 * chunk))
        self.assertEqual(second[1]["headers"]["upload-offset"], str(2 * chunk))
        self.assertEqual(second[-1]["offset"], str(len(data)))
        uploadId = self.idOf(url)
        self.assertEqual(sha256File(self.chunkd.uploadData(uploadId)), sha256(data))

    @defer.inlineCallbacks
    def test_resumeFromGivenUrlAfterRestart(self) -> Any:
        """
        The stored URL outlives the daemon: chunkd restarts on the same
        storage between the first chunks and the resume.
        """
        data = os.urandom(MiB + 77)
        chunk = 256 * KiB

        def firstPart() -> str:
            c = tusclient.TusClient(self.chunkd.url("/files/"))
            uploader = c.uploader(file_stream=io.BytesIO(data), chunk_size=chunk)
            uploader.upload_chunk()
            return str(uploader.url)

        url = yield threads.deferToThread(firstPart)
        self.chunkd.stop()
        self.chunkd.start()
        # A new port: the same upload path on the restarted daemon.
        newUrl = self.chunkd.url("/files/" + self.idOf(url))

        def resume() -> int:
            c = tusclient.TusClient(self.chunkd.url("/files/"))
            uploader = c.uploader(file_stream=io.BytesIO(data), chunk_size=chunk, url=newUrl)
            start = uploader.offset
            uploader.upload()
            return int(start)

        start = yield threads.deferToThread(resume)
        self.assertEqual(start, chunk)
        self.assertEqual(sha256File(self.chunkd.uploadData(self.idOf(url))), sha256(data))
