"""
How long the chunked-upload facade's finalize takes after the last chunk of
a large upload.

    python bench/facade_1g.py [--size 1GiB] [--chunk 1MiB] [--runs 5] [--cold 1]

Starts chunkd (python -m twisted chunkd, the default config: durable writes,
2 MiB chunk limit) on a free loopback port with a temporary storage
directory under /var/tmp, then, per run: creates an upload, sends it as
multipart/form-data PATCHes (the bytes in the part named "chunk", fresh
random bytes per chunk, hashed on the client as they are sent), and times
POST /uploads/finalize from the moment the last PATCH was answered.  The
answer's checksum is compared with the client's sha256 and with the
sha256 of the published file read back from disk.

"Warm" runs finalize on the daemon that received the chunks: the sha256
was computed as the bytes streamed in.  "Cold" runs restart the daemon
between the last PATCH and finalize, so the running hash is gone and
finalize reads the file again (in the disk pool): the cost the running
hash saves.  Every file is deleted after its run.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from chunkd.config import parseSize  # noqa: E402

BOUNDARY = "chunkd-bench-facade-5d1c9e"


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """chunkd in a process of its own, on one port and storage directory."""

    def __init__(self, port: int, storage: str) -> None:
        self.port = port
        self.storage = storage
        self.process: "subprocess.Popen[bytes] | None" = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "twisted", "--log-format=text", "chunkd",
             "--listen", f"tcp:port={self.port}:interface=127.0.0.1", "--storage", self.storage],
            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                status, _, _ = request(self.connect(), "GET", "/health")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("chunkd did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
            self.process = None

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes = b"",
            headers: "Dict[str, str] | None" = None) -> Tuple[int, Dict[str, str], bytes]:
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def multipart(chunk: bytes) -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"chunk\"; filename=\"blob\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    return b"".join((head, chunk, f"\r\n--{BOUNDARY}--\r\n".encode()))


def sha256OfFile(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def oneRun(daemon: Daemon, size: int, chunkSize: int, cold: bool) -> Dict[str, float]:
    conn = daemon.connect()
    status, headers, _ = request(conn, "POST", "/uploads",
                                 headers={"Upload-Length": str(size), "Tus-Resumable": "1.0.0"})
    assert status == 201, status
    location, token = headers["location"], headers["upload-token"]
    uploadId = location.rsplit("/", 1)[1]
    digest = hashlib.sha256()
    patchTimes: List[float] = []
    started = time.monotonic()
    for offset in range(0, size, chunkSize):
        chunk = os.urandom(min(chunkSize, size - offset))
        digest.update(chunk)
        sent = time.monotonic()
        status, headers, body = request(
            conn, "PATCH", location, multipart(chunk),
            {"Upload-Offset": str(offset), "Tus-Resumable": "1.0.0",
             "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        patchTimes.append(time.monotonic() - sent)
        assert status == 204 and headers["upload-offset"] == str(offset + len(chunk)), (status, body)
    lastChunk = time.monotonic()
    if cold:
        conn.close()
        daemon.stop()
        daemon.start()
        conn = daemon.connect()
        lastChunk = time.monotonic()  # the restart itself is not finalize's time
    payload = json.dumps({"uploadId": uploadId, "filename": "bench.mp4", "uploadToken": token}).encode()
    status, _, body = request(conn, "POST", "/uploads/finalize", payload,
                              {"Content-Type": "application/json"})
    finalized = time.monotonic()
    conn.close()
    assert status == 200, (status, body)
    answer = json.loads(body)
    expected = "sha256:" + digest.hexdigest()
    published = os.path.join(daemon.storage, "complete", "bench.mp4")
    onDisk = "sha256:" + sha256OfFile(published)
    for name in ("bench.mp4", "bench.mp4.json"):
        os.unlink(os.path.join(daemon.storage, "complete", name))
    for name in os.listdir(os.path.join(daemon.storage, "uploads")):
        if name.startswith(uploadId):
            os.unlink(os.path.join(daemon.storage, "uploads", name))
    return {
        "upload_s": lastChunk - started if not cold else sum(patchTimes),
        "finalize_s": finalized - lastChunk,
        "patch_median_ms": statistics.median(patchTimes) * 1000,
        "patch_max_ms": max(patchTimes) * 1000,
        "checksum_ok": float(answer["checksum"] == expected == onDisk and answer["size"] == size),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--chunk", default="1MiB")
    parser.add_argument("--runs", type=int, default=5, help="warm runs")
    parser.add_argument("--cold", type=int, default=1, help="runs with a restart before finalize")
    args = parser.parse_args()
    size, chunk = parseSize(args.size), parseSize(args.chunk)
    work = tempfile.mkdtemp(prefix="chunkd-facade-", dir="/var/tmp")
    daemon = Daemon(freePort(), os.path.join(work, "data"))
    mib = 1024 * 1024
    try:
        daemon.start()
        print(f"{size / mib:.0f} MiB in {chunk / mib:g} MiB multipart chunks, durable writes")
        for kind, count in (("warm", args.runs), ("cold", args.cold)):
            finals = []
            for n in range(count):
                r = oneRun(daemon, size, chunk, cold=kind == "cold")
                finals.append(r["finalize_s"])
                print(f"{kind} run {n + 1}: upload {r['upload_s']:.2f} s "
                      f"({size / mib / r['upload_s']:.0f} MiB/s), PATCH median {r['patch_median_ms']:.1f} ms "
                      f"max {r['patch_max_ms']:.1f} ms, finalize {r['finalize_s'] * 1000:.1f} ms, "
                      f"sha256 {'ok' if r['checksum_ok'] else 'WRONG'}", flush=True)
            if finals:
                print(f"{kind} finalize: median {statistics.median(finals) * 1000:.1f} ms, "
                      f"max {max(finals) * 1000:.1f} ms over {len(finals)} runs")
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
