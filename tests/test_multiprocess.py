"""
Scale-out for real: three chunkd processes on one storage directory behind
nginx (deploy/nginx-chunkd.conf, round robin, no stickiness), driven through
nginx with every protocol, a webhook receiver counting deliveries, and
C{kill -9} of a process in the middle of an upload.  Every file must be
byte-exact and every event delivered exactly once.

Needs nginx (Debian's package); the GlusterFS variant needs glusterfs-server
and glusterfs-client, root and FUSE.  C{.ci/run} installs both packages.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlencode, urlsplit

from twisted.trial import unittest

from tests.helpers import ROOT, Daemon, GlusterVolume, PartitionedGlusterVolume, freePort, waitForPort

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TUS = {"Tus-Resumable": "1.0.0"}


class HookReceiver:
    """A webhook receiver in a thread: every delivery, in arrival order."""

    def __init__(self) -> None:
        self.received: List[Tuple[str, str, Dict[str, Any]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((self.headers["Chunkd-Delivery"], self.headers["Chunkd-Event"],
                                          json.loads(body)["upload"]))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self, uploadId: str) -> List[str]:
        return [event for _, event, upload in self.received if upload["id"] == uploadId]


class Cluster:
    """
    N chunkd processes sharing one storage directory, and nginx in front
    of them with the reference configuration.
    """

    def __init__(self, case: unittest.TestCase, hooksUrl: str, storages: List[str]) -> None:
        """
        @param storages: each process's path to the one storage directory
            (the same path on one host; one per mount on a shared file
            system).  The first is where the test looks at files.
        """
        self.dir = tempfile.mkdtemp(prefix="chunkd-cluster-")
        case.addCleanup(shutil.rmtree, self.dir, True)
        self.storage = storages[0]
        config = {
            "storage": {"directory": self.storage, "durable": False},
            "network": {"trust_proxy": True},
            "hooks": {"endpoints": [{"url": hooksUrl, "secret": "s", "events": [
                "post-create", "post-finish", "post-terminate", "post-expire"]}], "max_backoff": "1s"},
        }
        self.config = config
        self.case = case
        self.daemons: List[Daemon] = [self.startProcess(storage) for storage in storages]
        self.port = freePort()
        self._startNginx(case)

    def startProcess(self, storage: Optional[str] = None) -> Daemon:
        """Another chunkd on the same storage (a restart, say)."""
        config = json.loads(json.dumps(self.config))
        config["storage"]["directory"] = storage or self.storage
        daemon = Daemon(config)
        self.case.addCleanup(daemon.stop)
        return daemon

    def _startNginx(self, case: unittest.TestCase) -> None:
        prefix = os.path.join(self.dir, "nginx")
        os.makedirs(prefix)
        with open(os.path.join(ROOT, "deploy", "nginx-chunkd.conf"), encoding="utf-8") as f:
            site = f.read()
        servers = " ".join(f"server 127.0.0.1:{d.port};" for d in self.daemons)
        site = site.replace("# Round robin, no stickiness: @SERVERS@", servers)
        site = site.replace("@LISTEN@", f"127.0.0.1:{self.port}")
        with open(os.path.join(prefix, "chunkd.conf"), "w", encoding="utf-8") as f:
            f.write(site)
        with open(os.path.join(prefix, "nginx.conf"), "w", encoding="utf-8") as f:
            f.write(f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/chunkd.conf;
}}
""")
        self.nginx = subprocess.Popen([NGINX, "-p", prefix, "-c", os.path.join(prefix, "nginx.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def stop() -> None:
            self.nginx.terminate()
            self.nginx.wait(timeout=20)

        case.addCleanup(stop)
        if not waitForPort(self.port, self.nginx):
            raise AssertionError("nginx did not start")

    def request(self, method: str, path: str, body: bytes = b"",
                headers: Optional[Dict[str, str]] = None, port: Optional[int] = None) -> Tuple[int, Dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=60)
        try:
            conn.request(method, path, body=body if body or method in ("POST", "PATCH", "PUT") else None,
                         headers=dict(headers or {}))
            response = conn.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            conn.close()

    def served(self, protocol: str, status: str) -> List[float]:
        """Per process: how many requests of C{protocol} it answered C{status}."""
        counts = []
        for daemon in self.daemons:
            if daemon.process.poll() is not None:
                counts.append(0.0)
                continue
            _, _, text = self.request("GET", "/metrics", port=daemon.port)
            line = f'chunkd_requests_total{{protocol="{protocol}",status="{status}"}} '
            found = [l for l in text.decode().splitlines() if l.startswith(line)]
            counts.append(float(found[0].split()[-1]) if found else 0.0)
        return counts


class MultiProcessTests(unittest.TestCase):
    timeout = 240

    def setUp(self) -> None:
        if not os.path.exists(NGINX):
            raise unittest.SkipTest("nginx is not installed (apt-get install nginx; .ci/run does)")
        self.hooks = HookReceiver()
        self.addCleanup(self.hooks.stop)
        self.cluster = Cluster(self, self.hooks.url, self.storages())

    def storages(self) -> List[str]:
        """Three processes on one host: one path."""
        storage = tempfile.mkdtemp(prefix="chunkd-cluster-storage-")
        self.addCleanup(shutil.rmtree, storage, True)
        return [storage] * 3

    def create(self, length: int, extra: Optional[Dict[str, str]] = None) -> str:
        status, headers, body = self.cluster.request(
            "POST", "/files/", headers=dict(TUS, **{"Upload-Length": str(length)}, **(extra or {})))
        self.assertEqual(status, 201, body)
        location = headers["location"]
        # network.trust_proxy: the URL clients see is nginx's, not a process's.
        self.assertTrue(location.startswith(f"http://127.0.0.1:{self.cluster.port}/files/"), location)
        return urlsplit(location).path

    def patch(self, path: str, offset: int, data: bytes) -> Tuple[int, Dict[str, str], bytes]:
        return self.cluster.request("PATCH", path, data, dict(
            TUS, **{"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}))

    def waitForHooks(self, check: Any, timeout: float = 20) -> None:
        deadline = time.time() + timeout
        while not check():
            if time.time() > deadline:
                self.fail(f"webhooks never settled: {self.hooks.received}")
            time.sleep(0.05)

    def assertEveryDeliveryOnce(self) -> None:
        deliveries = [d for d, _, _ in self.hooks.received]
        self.assertEqual(len(deliveries), len(set(deliveries)), "a delivery arrived twice")

    def test_tusPatchesAlternateBetweenProcesses(self) -> None:
        data = os.urandom(6 * 1024 * 1024)
        path = self.create(len(data))
        for n in range(6):
            piece = data[n * 1024 * 1024:(n + 1) * 1024 * 1024]
            status, headers, body = self.patch(path, n * 1024 * 1024, piece)
            self.assertEqual((status, headers.get("upload-offset")), (204, str((n + 1) * 1024 * 1024)), body)
            status, headers, _ = self.cluster.request("HEAD", path, headers=TUS)
            self.assertEqual(headers["upload-offset"], str((n + 1) * 1024 * 1024))
        status, _, body = self.cluster.request("GET", path, headers=TUS)
        self.assertEqual((status, hashlib.sha256(body).digest()), (200, hashlib.sha256(data).digest()))
        served = self.cluster.served("tus", "204")
        self.assertGreaterEqual(sum(1 for c in served if c), 2, served)  # really spread
        uploadId = path.rsplit("/", 1)[1]
        self.waitForHooks(lambda: "post-finish" in self.hooks.events(uploadId))
        self.assertEqual(self.hooks.events(uploadId), ["post-create", "post-finish"])
        self.assertEveryDeliveryOnce()

    def test_concatenationOfPartialsWrittenByDifferentProcesses(self) -> None:
        parts = [os.urandom(300 * 1024 + n) for n in range(3)]
        paths = []
        for part in parts:
            path = self.create(len(part), {"Upload-Concat": "partial"})
            self.assertEqual(self.patch(path, 0, part)[0], 204)
            paths.append(path)
        status, headers, body = self.cluster.request(
            "POST", "/files/", headers=dict(TUS, **{"Upload-Concat": "final;" + " ".join(paths)}))
        self.assertEqual(status, 201, body)
        final = urlsplit(headers["location"]).path
        status, headers, _ = self.cluster.request("HEAD", final, headers=TUS)
        self.assertEqual(headers.get("upload-offset"), str(sum(map(len, parts))))
        status, _, body = self.cluster.request("GET", final, headers=TUS)
        self.assertEqual(body, b"".join(parts))

    def test_resumableChunksSpreadWithConcurrentDuplicates(self) -> None:
        chunkSize = 256 * 1024
        data = os.urandom(8 * chunkSize + 1000)
        total = len(data) // chunkSize  # the last chunk takes the remainder
        identifier = f"{len(data)}-clip{os.getpid()}"

        def send(number: int) -> int:
            start = (number - 1) * chunkSize
            end = len(data) if number == total else start + chunkSize
            params = {
                "resumableChunkNumber": number, "resumableChunkSize": chunkSize,
                "resumableCurrentChunkSize": end - start, "resumableTotalSize": len(data),
                "resumableIdentifier": identifier, "resumableFilename": "clip.bin",
                "resumableRelativePath": "clip.bin", "resumableTotalChunks": total,
                "resumableType": "application/octet-stream",
            }
            status, _, body = self.cluster.request(
                "POST", "/resumable?" + urlencode(params), data[start:end],
                {"Content-Type": "application/octet-stream"})
            if status != 200:
                raise AssertionError(f"chunk {number}: {status} {body!r}")
            return status

        # Every chunk twice, all at once: the duplicates race on every process.
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(send, [n for n in range(1, total + 1) for _ in range(2)]))
        self.assertEqual(statuses, [200] * (2 * total))
        complete = os.path.join(self.cluster.storage, "complete")
        names = sorted(os.listdir(complete))
        self.assertEqual(len(names), 2, names)  # one file and its sidecar: completed once
        with open(os.path.join(complete, names[1]), encoding="utf-8") as f:
            sidecar = json.load(f)
        with open(os.path.join(complete, names[0]), "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(sidecar["sha256"], hashlib.sha256(data).hexdigest())
        self.waitForHooks(lambda: "post-finish" in self.hooks.events(sidecar["id"]))
        time.sleep(0.5)  # a second post-finish would have come by now
        self.assertEqual(self.hooks.events(sidecar["id"]), ["post-create", "post-finish"])
        self.assertEveryDeliveryOnce()

    def test_facadeFinalizedOnAnotherProcess(self) -> None:
        data = os.urandom(3 * 1024 * 1024 + 17)
        status, headers, body = self.cluster.request("POST", "/uploads", headers={"Upload-Length": str(len(data))})
        self.assertEqual(status, 201, body)
        path, token = headers["location"], headers["upload-token"]
        step = 1024 * 1024
        for offset in range(0, len(data), step):
            status, _, body = self.cluster.request("PATCH", path, data[offset:offset + step], {
                "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"})
            self.assertEqual(status, 204, body)
        uploadId = path.rsplit("/", 1)[1]
        answers = []
        for _ in range(3):  # round robin: at least one lands on another process than the last PATCH
            status, _, body = self.cluster.request("POST", "/uploads/finalize", json.dumps(
                {"uploadId": uploadId, "filename": "clip.mp4", "uploadToken": token}).encode(),
                {"Content-Type": "application/json"})
            self.assertEqual(status, 200, body)
            answers.append(json.loads(body))
        self.assertEqual(answers[0]["checksum"], "sha256:" + hashlib.sha256(data).hexdigest())
        self.assertEqual(answers, [answers[0]] * 3)
        with open(os.path.join(self.cluster.storage, "complete", "clip.mp4"), "rb") as f:
            self.assertEqual(f.read(), data)

    def test_killMinus9MidUploadTheOthersCarryOn(self) -> None:
        data = os.urandom(4 * 1024 * 1024)
        path = self.create(len(data))
        victim = self.cluster.daemons[1]
        # Half the body straight to one process, which then dies holding
        # the upload's lock.
        conn = socket.create_connection(("127.0.0.1", victim.port))
        conn.sendall(("PATCH %s HTTP/1.1\r\nHost: h\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                      "Content-Type: application/offset+octet-stream\r\nContent-Length: %d\r\n\r\n"
                      % (path, len(data))).encode() + data[:2 * 1024 * 1024])
        time.sleep(0.5)
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        conn.close()
        # systemd restarts it; the new process finds the shared hook spool
        # with deliveries the live ones are sending.
        self.cluster.startProcess()
        # Its lock died with it: another process answers and takes over.
        offset = None
        for _ in range(20):
            status, headers, _ = self.cluster.request("HEAD", path, headers=TUS)
            if status == 200:
                offset = int(headers["upload-offset"])
                break
            time.sleep(0.1)
        assert offset is not None
        self.assertLessEqual(offset, 2 * 1024 * 1024)
        while offset < len(data):
            status, headers, body = self.patch(path, offset, data[offset:])
            if status == 502:  # nginx tried the dead process; a tus client resumes
                status, headers, _ = self.cluster.request("HEAD", path, headers=TUS)
                offset = int(headers["upload-offset"])
                continue
            self.assertEqual(status, 204, body)
            offset = int(headers["upload-offset"])
        status, _, body = self.cluster.request("GET", path, headers=TUS)
        self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(data).hexdigest())
        uploadId = path.rsplit("/", 1)[1]
        self.waitForHooks(lambda: "post-finish" in self.hooks.events(uploadId))
        time.sleep(1.5)  # the restarted process's spool scans have run
        self.assertEqual(self.hooks.events(uploadId), ["post-create", "post-finish"])
        self.assertEveryDeliveryOnce()
        self.assertEqual(os.listdir(os.path.join(self.cluster.storage, "hooks")), [])


class GlusterMultiProcessTests(MultiProcessTests):
    """
    Every scenario above on a real GlusterFS volume mounted twice through
    FUSE: two processes on one mount, one on the other, as two hosts would
    see one shared file system (../shared/docs/glusterfs.md).
    """

    def storages(self) -> List[str]:
        volume = GlusterVolume(self, mounts=2)
        paths = [os.path.join(mount, "chunkd") for mount in volume.mounts]
        os.makedirs(paths[0])
        return [paths[0], paths[0], paths[1]]


class PartitionTests(unittest.TestCase):
    """
    Two hosts on one GlusterFS volume (their FUSE clients in network
    namespaces of their own); one is cut off while it streams an upload.
    The other takes the upload over once the cut-off host's lock times out,
    and nothing the cut-off host wrote after losing its lock ever counts.
    """

    timeout = 240

    def test_aHostCutOffMidUploadIsTakenOverAndCountsNothingAfter(self) -> None:
        volume = PartitionedGlusterVolume(self)
        storages = [os.path.join(mount, "chunkd") for mount in volume.mounts]
        os.makedirs(storages[0])
        config = {"storage": {"checkpoint_every": "256KiB"}}
        hosts = []
        for storage in storages:
            daemon = Daemon({"storage": dict(config["storage"], directory=storage)})
            self.addCleanup(daemon.stop)
            hosts.append(daemon)
        cutOff, other = hosts

        def request(daemon: Daemon, method: str, path: str, body: bytes = b"",
                    headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
            try:
                conn.request(method, path, body=body or None, headers=dict(TUS, **(headers or {})))
                response = conn.getresponse()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            finally:
                conn.close()

        data = os.urandom(4 * 1024 * 1024)
        status, headers, _ = request(other, "POST", "/files/", headers={"Upload-Length": str(len(data))})
        self.assertEqual(status, 201)
        path = urlsplit(headers["location"]).path
        # The first host streams the upload and has recorded part of it...
        stream = socket.create_connection(("127.0.0.1", cutOff.port))
        self.addCleanup(stream.close)
        stream.sendall(("PATCH %s HTTP/1.1\r\nHost: h\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                        "Content-Type: application/offset+octet-stream\r\nContent-Length: %d\r\n\r\n"
                        % (path, len(data))).encode() + data[:1024 * 1024])
        deadline = time.time() + 20
        while int(request(other, "HEAD", path)[1]["upload-offset"]) == 0:
            self.assertLess(time.time(), deadline, "no checkpoint was recorded")
            time.sleep(0.1)
        # ... when it is cut off, and keeps sending what it can.
        volume.cut(1)
        stale = b"\xee" * (2 * 1024 * 1024)  # never to be seen in the file

        def keepSending() -> None:
            try:
                stream.settimeout(30)
                stream.sendall(stale)
            except OSError:
                pass

        sender = threading.Thread(target=keepSending, daemon=True)
        sender.start()
        # The other host takes over once the lost lock is released.
        started = time.time()
        while True:
            status, headers, _ = request(other, "HEAD", path)
            offset = int(headers["upload-offset"])
            status, headers, body = request(other, "PATCH", path, data[offset:], {
                "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"})
            if status == 204:
                break
            self.assertIn(status, (409, 423), body)  # still locked, or raced a checkpoint
            self.assertLess(time.time() - started, 60, "the lock was never released")
            time.sleep(0.5)
        tookOver = time.time() - started
        status, _, body = request(other, "GET", path)
        self.assertEqual(hashlib.sha256(body).digest(), hashlib.sha256(data).digest())
        # The cut-off host comes back: whatever it still tries is refused.
        volume.heal(1)
        time.sleep(8)
        status, headers, body = request(other, "HEAD", path)
        self.assertEqual((status, headers["upload-offset"]), (200, str(len(data))))
        status, _, body = request(other, "GET", path)
        self.assertEqual(hashlib.sha256(body).digest(), hashlib.sha256(data).digest())
        self.assertNotIn(stale[:4096], body)
        self.assertLess(tookOver, 30)
