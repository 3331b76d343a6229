"""
Resident memory of chunkd while one tus PATCH streams a large file.

    python bench/tus_rss.py --size 2GiB

Starts chunkd (python -m twisted chunkd) on a free loopback port with a
temporary storage directory, creates an upload, sends the whole file in one
PATCH with curl -T (which streams from disk), samples the server's VmRSS
every 50 ms, checks the stored file's sha256, and prints the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from chunkd.config import parseSize  # noqa: E402


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="2GiB")
    args = parser.parse_args()
    size = parseSize(args.size)
    work = tempfile.mkdtemp(prefix="chunkd-rss-", dir="/var/tmp")
    try:
        source = os.path.join(work, "source.bin")
        subprocess.run(["head", "-c", str(size), "/dev/urandom"], stdout=open(source, "wb"), check=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "twisted", "--log-format=text", "chunkd",
             "--listen", f"tcp:port={port}:interface=127.0.0.1", "--storage", os.path.join(work, "data")],
            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            if subprocess.run(["curl", "-sf", "-X", "OPTIONS", base + "/files/"]).returncode == 0:
                break
            time.sleep(0.1)
        idle = rss(server.pid)
        location = subprocess.run(
            ["curl", "-s", "-D", "-", "-o", "/dev/null", "-X", "POST", "-H", "Tus-Resumable: 1.0.0",
             "-H", f"Upload-Length: {size}", base + "/files/"], capture_output=True, text=True
        ).stdout
        url = [l.split(" ", 1)[1].strip() for l in location.splitlines() if l.lower().startswith("location:")][0]
        samples: list = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(rss(server.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        result = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PATCH", "-T", source,
             "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0",
             "-H", "Content-Type: application/offset+octet-stream", url],
            capture_output=True, text=True)
        elapsed = time.monotonic() - started
        done.set()
        sampler.join()
        uploadId = url.rsplit("/", 1)[1]
        stored = os.path.join(work, "data", "uploads", uploadId + ".data")
        ok = sha256(stored) == sha256(source)
        server.terminate()
        server.wait()
        mib = 1024 * 1024
        print(f"size {size / mib:.0f} MiB, status {result.stdout}, sha256 match {ok}")
        print(f"elapsed {elapsed:.2f} s, {size / mib / elapsed:.0f} MiB/s")
        print(f"RSS idle {idle / mib:.1f} MiB, peak {max(samples) / mib:.1f} MiB, "
              f"last {samples[-1] / mib:.1f} MiB over {len(samples)} samples")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
