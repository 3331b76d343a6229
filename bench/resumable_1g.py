"""
Resident memory of chunkd while Resumable.js (or flow.js) uploads a large
file in chunks, several at once and out of order.

    python bench/resumable_1g.py --size 1GiB --chunk 1MiB --parallel 3

Starts chunkd (python -m twisted chunkd, default config: durable writes,
or C{--no-durable}) on
a free loopback port with a temporary storage directory, then plays the
client: each of C{--parallel} workers takes the next chunk of a shuffled
order, asks the test GET, and sends the chunk as a multipart POST shaped
like the browser's (parameters in the query and as fields, then the file
part), on a keep-alive connection.  The server's VmRSS is sampled every
50 ms; at the end the completed file's sha256 (the sidecar's and a fresh
hash) is compared with the source's.  The temporary files are deleted.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Tuple
from urllib.parse import quote

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from chunkd.config import parseSize  # noqa: E402

MiB = 1 << 20
BOUNDARY = "----WebKitFormBoundaryBenchResumable1G"


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpuSeconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def makeSource(path: str, size: int) -> str:
    """Random bytes on disk, hashed as they are written."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 64 * MiB))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


def geometry(size: int, chunk: int) -> List[Tuple[int, int]]:
    """(start, end) of every chunk, as both clients cut a file by default."""
    count = max(size // chunk, 1)
    return [(i * chunk, size if i == count - 1 else (i + 1) * chunk) for i in range(count)]


def params(prefix: str, number: int, chunk: int, bounds: Tuple[int, int], size: int, count: int) -> List[Tuple[str, str]]:
    pairs = [("ChunkNumber", number), ("ChunkSize", chunk), ("CurrentChunkSize", bounds[1] - bounds[0]),
             ("TotalSize", size)]
    if prefix == "resumable":
        pairs.append(("Type", "application/octet-stream"))
    pairs += [("Identifier", f"{size}-bench1Gbin"), ("Filename", "bench-1G.bin"),
              ("RelativePath", "bench-1G.bin"), ("TotalChunks", count)]
    return [(prefix + k, str(v)) for k, v in pairs]


class Client:
    """
    One worker of the client: a keep-alive connection, test then upload.
    """

    def __init__(self, port: int, mount: str, prefix: str, source: str, size: int, chunk: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        self.mount = mount
        self.prefix = prefix
        self.fd = os.open(source, os.O_RDONLY)
        self.size = size
        self.chunk = chunk
        self.chunks = geometry(size, chunk)

    def request(self, method: str, url: str, body: bytes = b"", headers: Dict[str, str] = {}) -> Tuple[int, bytes]:
        self.conn.request(method, url, body=body or None, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def send(self, number: int) -> Tuple[int, bytes]:
        bounds = self.chunks[number - 1]
        pairs = params(self.prefix, number, self.chunk, bounds, self.size, len(self.chunks))
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in pairs)
        url = f"{self.mount}?{query}"
        status, _ = self.request("GET", url)
        if status == 200:
            return status, b""
        fields = b"".join(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in pairs
        )
        head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="bench-1G.bin"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n").encode()
        data = os.pread(self.fd, bounds[1] - bounds[0], bounds[0])
        body = fields + head + data + f"\r\n--{BOUNDARY}--\r\n".encode()
        target = url if self.prefix == "resumable" else self.mount  # flow.js: fields only
        return self.request("POST", target, body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})

    def close(self) -> None:
        self.conn.close()
        os.close(self.fd)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--chunk", default="1MiB")
    parser.add_argument("--parallel", type=int, default=3)
    parser.add_argument("--dialect", choices=("resumable", "flow"), default="resumable")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-durable", action="store_true",
                        help="storage.durable: false (no fdatasync per chunk) to see the protocol's own cost")
    args = parser.parse_args()
    size, chunk = parseSize(args.size), parseSize(args.chunk)
    mount = "/" + args.dialect
    work = tempfile.mkdtemp(prefix="chunkd-resumable-rss-", dir="/var/tmp")
    server = None
    try:
        source = os.path.join(work, "source.bin")
        expected = makeSource(source, size)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        storage = os.path.join(work, "data")
        command = [sys.executable, "-m", "twisted", "--log-format=text", "chunkd",
                   "--listen", f"tcp:port={port}:interface=127.0.0.1", "--storage", storage]
        if args.no_durable:
            config = os.path.join(work, "chunkd.yaml")
            with open(config, "w") as f:
                f.write("storage:\n  durable: false\n")
            command += ["--config", config]
        print("server:", " ".join(command[1:]))
        server = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=ROOT),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.5)
        idle = rss(server.pid)

        count = len(geometry(size, chunk))
        order = list(range(1, count + 1))
        random.Random(args.seed).shuffle(order)
        lock = threading.Lock()
        answers: List[Tuple[int, int, bytes]] = []
        samples: List[Tuple[float, int, int]] = []  # (time, chunks done, rss)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append((time.monotonic(), len(answers), rss(server.pid)))
                time.sleep(0.05)

        def work_() -> None:
            client = Client(port, mount, args.dialect, source, size, chunk)
            try:
                while True:
                    with lock:
                        if not order:
                            return
                        number = order.pop()
                    status, text = client.send(number)
                    with lock:
                        answers.append((number, status, text))
            finally:
                client.close()

        sampler = threading.Thread(target=sample)
        sampler.start()
        serverCpu, clientCpu = cpuSeconds(server.pid), time.process_time()
        started = time.monotonic()
        workers = [threading.Thread(target=work_) for _ in range(args.parallel)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.monotonic() - started
        serverCpu, clientCpu = cpuSeconds(server.pid) - serverCpu, time.process_time() - clientCpu
        done.set()
        sampler.join()

        statuses = sorted({status for _, status, _ in answers})
        completions = sum(1 for _, _, text in answers if text and json.loads(text).get("complete"))
        uploads = [n for n in os.listdir(os.path.join(storage, "complete")) if not n.endswith(".json")]
        published = os.path.join(storage, "complete", uploads[0])
        with open(published + ".json") as f:
            sidecar = json.load(f)
        actual = sha256(published)
        rssValues = [r for _, _, r in samples]
        print(f"{args.dialect}: {size / MiB:.0f} MiB as {count} chunks of {chunk / MiB:.2f} MiB, "
              f"{args.parallel} at a time, shuffled (seed {args.seed})")
        print(f"statuses {statuses}, answers {len(answers)}, completions reported {completions}")
        print(f"sha256 source {expected}")
        print(f"sha256 sidecar {sidecar['sha256']} match {sidecar['sha256'] == expected}; "
              f"rehash match {actual == expected}")
        print(f"elapsed {elapsed:.2f} s, {size / MiB / elapsed:.0f} MiB/s; CPU seconds: "
              f"server {serverCpu:.2f}, client {clientCpu:.2f}")
        print(f"RSS idle {idle / MiB:.1f} MiB, peak {max(rssValues) / MiB:.1f} MiB, "
              f"last {rssValues[-1] / MiB:.1f} MiB over {len(rssValues)} samples")
        quarters = []
        for q in (0.25, 0.5, 0.75, 1.0):
            target = int(count * q)
            at = next((r for _, n, r in samples if n >= target), rssValues[-1])
            quarters.append(f"{int(q * 100)}%: {at / MiB:.1f}")
        print("RSS (MiB) when this share of chunks was answered: " + ", ".join(quarters))
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
