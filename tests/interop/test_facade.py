"""
The chunked-upload facade (/uploads) against chunkd as a real process,
driven the way the camera app of shared/seeds/pulse-cam-chunked-uploads.md
sends its uploads: create with Upload-Length, 1 MiB chunks in order (the
last one shorter) as raw application/offset+octet-stream or as
multipart/form-data with the bytes in the part named "chunk", up to 3
attempts per chunk, then finalize with the upload token, and a health
check.  The camera speaks tus natively, so after a failed attempt it asks
HEAD where the upload stands and continues from there.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urljoin, urlsplit

from twisted.internet import defer, threads

from tests.interop.harness import InteropTestCase, sha256, sha256File

MiB = 1024 * 1024
CHUNK = MiB  # the seed's chunk size


class CameraError(Exception):
    pass


class PulseCam:
    """
    What the camera app sends, request by request, over plain HTTP/1.1.
    Every request and its answer is kept in C{log}.
    """

    def __init__(self, base: str, multipart: bool = False, retryDelay: float = 0.2) -> None:
        self.base = base
        self.multipart = multipart
        self.retryDelay = retryDelay
        self.log: List[Dict[str, Any]] = []
        self.cutNext: Optional[int] = None  # cut the next PATCH after this many body bytes

    def request(self, method: str, path: str, body: bytes = b"", headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
        url = urlsplit(urljoin(self.base, path))
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        try:
            conn.request(method, url.path + (f"?{url.query}" if url.query else ""), body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            answer = {k.lower(): v for k, v in response.getheaders()}
            self.log.append({"method": method, "path": url.path, "headers": dict(headers or {}), "length": len(body),
                             "status": response.status, "answer": answer})
            return response.status, answer, data
        finally:
            conn.close()

    def cutPatch(self, path: str, headers: Dict[str, str], body: bytes, after: int) -> None:
        """
        A PATCH whose connection drops after C{after} bytes of its body
        (the phone lost the network mid-chunk).
        """
        url = urlsplit(urljoin(self.base, path))
        head = f"PATCH {url.path} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {len(body)}\r\n\r\n"
        with socket.create_connection((url.hostname, url.port), timeout=10) as s:
            s.sendall(head.encode("latin-1") + body[:after])
            time.sleep(0.3)
        self.log.append({"method": "PATCH", "path": url.path, "headers": headers, "length": len(body), "status": None,
                         "cut": after})

    def health(self) -> Tuple[int, Any]:
        status, _, body = self.request("GET", "/health")
        return status, json.loads(body)

    def create(self, size: int) -> Tuple[str, Optional[str]]:
        status, answer, body = self.request("POST", "/uploads", headers={"Upload-Length": str(size),
                                                                         "Tus-Resumable": "1.0.0"})
        if status != 201:
            raise CameraError(f"create: {status} {body!r}")
        return answer["location"], answer.get("upload-token")

    def chunkRequest(self, offset: int, chunk: bytes) -> Tuple[Dict[str, str], bytes]:
        headers = {"Upload-Offset": str(offset), "Tus-Resumable": "1.0.0"}
        if not self.multipart:
            headers["Content-Type"] = "application/offset+octet-stream"
            return headers, chunk
        boundary = "----PulseCam" + uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"chunk\"; filename=\"blob\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + chunk + f"\r\n--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        return headers, body

    def upload(self, location: str, data: bytes, offset: int = 0) -> None:
        while offset < len(data):
            chunk = data[offset:offset + CHUNK]
            for attempt in range(3):
                headers, body = self.chunkRequest(offset, chunk)
                if self.cutNext is not None:
                    after, self.cutNext = self.cutNext, None
                    self.cutPatch(location, headers, body, after)
                    status, answer = None, {}
                else:
                    status, answer, _ = self.request("PATCH", location, body, headers)
                if status == 204 and int(answer["upload-offset"]) == offset + len(chunk):
                    offset += len(chunk)
                    break
                # Ask where the upload stands, as tus does, and go on from there.
                time.sleep(self.retryDelay)
                status, answer, _ = self.request("HEAD", location, headers={"Tus-Resumable": "1.0.0"})
                if status not in (200, 204):
                    raise CameraError(f"HEAD {location}: {status}")
                offset = int(answer["upload-offset"])
                chunk = data[offset:offset + CHUNK]
            else:
                raise CameraError(f"chunk at {offset} failed 3 times")

    def finalize(self, uploadId: str, filename: str, token: Optional[str], tokenInHeader: bool = False) -> Tuple[int, Any]:
        payload: Dict[str, Any] = {"uploadId": uploadId, "filename": filename}
        headers = {"Content-Type": "application/json"}
        if tokenInHeader:
            headers["X-Upload-Token"] = token or ""
        else:
            payload["uploadToken"] = token
        status, _, body = self.request("POST", "/uploads/finalize", json.dumps(payload).encode(), headers)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode("utf-8", "replace")


class FacadeTests(InteropTestCase):
    def camera(self, **kw: Any) -> PulseCam:
        return PulseCam(self.chunkd.base, **kw)

    def completed(self, filename: str) -> str:
        return os.path.join(self.chunkd.completeDir(), filename)

    def checkFinalized(self, cam: PulseCam, uploadId: str, data: bytes, filename: str, status: int, answer: Any) -> None:
        self.assertEqual(status, 200, answer)
        self.assertEqual(answer, {"videoId": uploadId, "status": "complete", "size": len(data),
                                  "checksum": "sha256:" + sha256(data)})
        self.assertEqual(sha256File(self.completed(filename)), sha256(data))
        patches = [r for r in cam.log if r["method"] == "PATCH"]
        self.assertEqual([r["status"] for r in patches if r.get("cut") is None], [204] * len([r for r in patches if r.get("cut") is None]))

    def sequence(self, size: int, filename: str, multipart: bool, tokenInHeader: bool = False) -> Dict[str, Any]:
        data = os.urandom(size)
        cam = self.camera(multipart=multipart)
        health = cam.health()
        location, token = cam.create(len(data))
        uploadId = location.rstrip("/").rsplit("/", 1)[1]
        cam.upload(location, data)
        status, answer = cam.finalize(uploadId, filename, token, tokenInHeader)
        return {"cam": cam, "data": data, "id": uploadId, "token": token, "health": health, "location": location,
                "status": status, "answer": answer}

    @defer.inlineCallbacks
    def test_rawChunksThenFinalize(self) -> Any:
        run = yield threads.deferToThread(self.sequence, 3 * MiB + 12345, "clip-0001.mp4", False)
        self.assertEqual(run["health"], (200, {"status": "OK"}))
        self.assertTrue(urlsplit(run["location"]).path.startswith("/uploads/"), run["location"])
        self.assertTrue(run["token"], "chunkd issued no Upload-Token at creation")
        self.checkFinalized(run["cam"], run["id"], run["data"], "clip-0001.mp4", run["status"], run["answer"])
        cam = run["cam"]
        self.assertEqual([r["method"] for r in cam.log], ["GET", "POST", "PATCH", "PATCH", "PATCH", "PATCH", "POST"])
        patches = [r for r in cam.log if r["method"] == "PATCH"]
        self.assertEqual([int(r["answer"]["upload-offset"]) for r in patches],
                         [MiB, 2 * MiB, 3 * MiB, len(run["data"])])
        self.assertEqual({r["answer"].get("tus-resumable") for r in cam.log[1:-1]}, {"1.0.0"})

    @defer.inlineCallbacks
    def test_multipartChunksThenFinalize(self) -> Any:
        run = yield threads.deferToThread(self.sequence, 2 * MiB + 1, "clip-0002.mov", True, True)
        self.checkFinalized(run["cam"], run["id"], run["data"], "clip-0002.mov", run["status"], run["answer"])
        patches = [r for r in run["cam"].log if r["method"] == "PATCH"]
        self.assertEqual(len(patches), 3)
        self.assertTrue(all(r["headers"]["Content-Type"].startswith("multipart/form-data") for r in patches))

    @defer.inlineCallbacks
    def test_finalizeIsIdempotent(self) -> Any:
        """
        The app retries finalize when the answer was lost: the same answer,
        and still one file.
        """
        run = yield threads.deferToThread(self.sequence, MiB // 2, "clip-0003.mp4", False)
        self.checkFinalized(run["cam"], run["id"], run["data"], "clip-0003.mp4", run["status"], run["answer"])
        again = yield threads.deferToThread(run["cam"].finalize, run["id"], "clip-0003.mp4", run["token"])
        self.assertEqual(again, (200, run["answer"]))
        self.assertEqual(sorted(n for n in os.listdir(self.chunkd.completeDir()) if not n.endswith(".json")),
                         ["clip-0003.mp4"])

    @defer.inlineCallbacks
    def test_wrongTokenRefused(self) -> Any:
        data = os.urandom(1000)
        cam = self.camera()

        def attempt() -> Any:
            location, token = cam.create(len(data))
            uploadId = location.rstrip("/").rsplit("/", 1)[1]
            cam.upload(location, data)
            refused = cam.finalize(uploadId, "clip.mp4", "not-the-token")
            missing = cam.finalize(uploadId, "clip.mp4", None)
            accepted = cam.finalize(uploadId, "clip.mp4", token)
            return refused, missing, accepted

        refused, missing, accepted = yield threads.deferToThread(attempt)
        self.assertIn(refused[0], (401, 403))
        self.assertIn(missing[0], (401, 403))
        self.assertEqual(accepted[0], 200)
        self.assertEqual(accepted[1]["checksum"], "sha256:" + sha256(data))

    @defer.inlineCallbacks
    def test_chunkCutMidwayThenRetried(self) -> Any:
        """
        The network drops in the middle of the second chunk; the app's next
        attempt asks HEAD for the offset and continues from there.
        """
        data = os.urandom(3 * MiB)
        cam = self.camera(multipart=False)

        def run() -> Any:
            location, token = cam.create(len(data))
            uploadId = location.rstrip("/").rsplit("/", 1)[1]
            # The first chunk goes through, the second is cut after 300 KiB.
            headers, body = cam.chunkRequest(0, data[:CHUNK])
            status, answer, _ = cam.request("PATCH", location, body, headers)
            assert status == 204, status
            cam.cutNext = 300 * 1024
            cam.upload(location, data, offset=CHUNK)
            return uploadId, token, cam.finalize(uploadId, "cut.mp4", token)

        uploadId, token, (status, answer) = yield threads.deferToThread(run)
        self.checkFinalized(cam, uploadId, data, "cut.mp4", status, answer)
        heads = [r for r in cam.log if r["method"] == "HEAD"]
        self.assertEqual(len(heads), 1)
        # Whatever of the cut body reached the disk counts (as in tus), or none of it.
        self.assertIn(int(heads[0]["answer"]["upload-offset"]), (CHUNK, CHUNK + 300 * 1024))
        self.assertEqual([r["method"] for r in cam.log], ["POST", "PATCH", "PATCH", "HEAD", "PATCH", "PATCH", "POST"])

    @defer.inlineCallbacks
    def test_hostileFilenameStaysInside(self) -> Any:
        run = yield threads.deferToThread(self.sequence, 4096, "../../etc/passwd", False)
        self.assertEqual(run["status"], 200, run["answer"])
        self.assertEqual(run["answer"]["checksum"], "sha256:" + sha256(run["data"]))
        names = [n for n in os.listdir(self.chunkd.completeDir()) if not n.endswith(".json")]
        self.assertEqual(len(names), 1)
        self.assertNotIn("/", names[0])
        self.assertEqual(sha256File(self.completed(names[0])), sha256(run["data"]))
        self.assertFalse(os.path.exists(os.path.join(self.chunkd.storage, "..", "etc", "passwd")))
