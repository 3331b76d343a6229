"""
chunkd benchmark load generator: a small HTTP/1.1 client on asyncio streams.

Bodies leave the client with sendfile(2) from the (page-cached) source file,
so the client spends almost no CPU per byte and is not the bottleneck on a
2-core machine where it shares the CPUs with the server under test.

Each mode prints one JSON object on stdout:

  patches    one tus upload sent as sequential PATCHes of --chunk bytes
  concurrent --n uploads of --size bytes at once, one connection each
             (tus: POST + one PATCH; put: one WebDAV PUT)
  resumable  one file through the Resumable.js protocol: for every chunk a
             test GET, then (if not 200) a multipart POST; --sim at a time
  head       --n HEAD requests spread over --conns keep-alive connections
             (connection i asks about the i-th of --paths)
  headload   W8: --streams uploads streaming for --duration seconds, and
             meanwhile HEADs about a finished upload (from a `headpoll`
             child process), each one's latency recorded
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
import uuid
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlencode, urlsplit

Headers = Dict[bytes, bytes]


class HTTPError(Exception):
    pass


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    async def open(self) -> "Conn":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        return self

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _head(self, method: str, path: str, headers: Dict[str, str], length: Optional[int]) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        for k, v in headers.items():
            lines.append(f"{k}: {v}")
        if length is not None:
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def request(
        self,
        method: str,
        path: str,
        headers: Optional[Dict[str, str]] = None,
        body: bytes = b"",
        file=None,
        offset: int = 0,
        count: int = 0,
        tail: bytes = b"",
    ) -> Tuple[int, Headers, bytes]:
        """
        Send a request whose body is C{body}, then C{count} bytes of C{file}
        from C{offset} (by sendfile), then C{tail}; read the response.
        """
        if self.writer is None:
            await self.open()
        assert self.writer is not None and self.reader is not None
        length = len(body) + count + len(tail)
        hasBody = length > 0 or method in ("POST", "PUT", "PATCH")
        self.writer.write(self._head(method, path, headers or {}, length if hasBody else None) + body)
        if count:
            await self.writer.drain()
            loop = asyncio.get_running_loop()
            await loop.sendfile(self.writer.transport, file, offset, count)
        if tail:
            self.writer.write(tail)
        await self.writer.drain()
        return await self._response(method == "HEAD")

    async def _response(self, head: bool) -> Tuple[int, Headers, bytes]:
        reader = self.reader
        assert reader is not None
        while True:
            raw = await reader.readuntil(b"\r\n\r\n")
            lines = raw.split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            status = int(parts[1])
            headers: Headers = {}
            for line in lines[1:]:
                if line:
                    k, _, v = line.partition(b":")
                    headers[k.strip().lower()] = v.strip()
            if 100 <= status < 200:
                continue
            break
        body = b""
        if head or status in (204, 304):
            pass
        elif b"content-length" in headers:
            n = int(headers[b"content-length"])
            if n:
                body = await reader.readexactly(n)
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            pieces = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                pieces.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(pieces)
        else:
            body = await reader.read()
            self.close()
            self.writer = None
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
            self.writer = None
        return status, headers, body


def pct(values: List[float], p: float) -> Optional[float]:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def latencyStats(lat: List[float]) -> Dict[str, Optional[float]]:
    return {
        "lat_p50_ms": None if not lat else pct(lat, 50) * 1000,
        "lat_p99_ms": None if not lat else pct(lat, 99) * 1000,
        "lat_max_ms": None if not lat else max(lat) * 1000,
        "requests": len(lat),
    }


TUS = {"Tus-Resumable": "1.0.0"}


def locationPath(headers: Headers) -> str:
    loc = headers[b"location"].decode("latin-1")
    return urlsplit(loc).path


def tusMetadata(filename: str) -> str:
    """
    A filename and a filetype, as tus clients send them (tus-js-client,
    Uppy): tuspyserver answers a HEAD 400 for an upload created without
    both, so every server is sent them.
    """
    def b64(v: str) -> str:
        return base64.b64encode(v.encode()).decode("ascii")

    return f"filename {b64(filename)},filetype {b64('application/octet-stream')}"


async def tusCreate(conn: Conn, prefix: str, length: int, filename: str = "bench.bin") -> str:
    status, h, _ = await conn.request(
        "POST", prefix, {**TUS, "Upload-Length": str(length), "Upload-Metadata": tusMetadata(filename)})
    if status != 201:
        raise HTTPError(f"creation answered {status}")
    return locationPath(h)


async def modePatches(a) -> dict:
    u = urlsplit(a.url)
    size = a.size or os.path.getsize(a.file)
    conn = await Conn(u.hostname, u.port).open()
    lat: List[float] = []
    with open(a.file, "rb") as f:
        t0 = time.perf_counter()
        path = await tusCreate(conn, u.path, size)
        offset = 0
        while offset < size:
            n = min(a.chunk, size - offset)
            r0 = time.perf_counter()
            status, h, _ = await conn.request(
                "PATCH", path,
                {**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
                file=f, offset=offset, count=n,
            )
            lat.append(time.perf_counter() - r0)
            if status != 204:
                raise HTTPError(f"PATCH at {offset} answered {status}")
            offset += n
            if int(h.get(b"upload-offset", b"-1")) != offset:
                raise HTTPError(f"PATCH answered Upload-Offset {h.get(b'upload-offset')} expected {offset}")
        seconds = time.perf_counter() - t0
    conn.close()
    return {"seconds": seconds, "bytes": size, "paths": [path], **latencyStats(lat)}


async def modeConcurrent(a) -> dict:
    u = urlsplit(a.url)
    lat: List[float] = []
    paths: List[str] = [""] * a.n
    conns = [await Conn(u.hostname, u.port).open() for _ in range(a.n)]
    start = asyncio.Event()
    f = open(a.file, "rb")

    async def one(i: int) -> None:
        conn = conns[i]
        await start.wait()
        offset = i * a.size
        if a.proto == "tus":
            path = await tusCreate(conn, u.path, a.size)
            r0 = time.perf_counter()
            status, h, _ = await conn.request(
                "PATCH", path,
                {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
                file=f, offset=offset, count=a.size,
            )
            lat.append(time.perf_counter() - r0)
            if status != 204:
                raise HTTPError(f"PATCH answered {status}")
        else:
            path = f"{u.path.rstrip('/')}/{a.tag}-{i:03d}"
            r0 = time.perf_counter()
            status, h, _ = await conn.request("PUT", path, {}, file=f, offset=offset, count=a.size)
            lat.append(time.perf_counter() - r0)
            if status not in (200, 201, 204):
                raise HTTPError(f"PUT answered {status}")
        paths[i] = path
        conn.close()

    tasks = [asyncio.create_task(one(i)) for i in range(a.n)]
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - t0
    f.close()
    return {"seconds": seconds, "bytes": a.n * a.size, "paths": paths, **latencyStats(lat)}


async def modeResumable(a) -> dict:
    u = urlsplit(a.url)
    size = a.size or os.path.getsize(a.file)
    total = max(1, size // a.chunk)  # Resumable.js: the last chunk absorbs the remainder
    identifier = f"{size}-{a.filename.replace('.', '')}"
    lat: List[float] = []
    queue = list(range(1, total + 1))
    boundary = "----chunkdbench" + uuid.uuid4().hex
    f = open(a.file, "rb")
    counts = {"tested_present": 0, "posted": 0}

    def chunkRange(n: int) -> Tuple[int, int]:
        start = (n - 1) * a.chunk
        end = size if n == total else start + a.chunk
        return start, end - start

    def params(n: int, current: int) -> List[Tuple[str, str]]:
        return [
            ("resumableChunkNumber", str(n)),
            ("resumableChunkSize", str(a.chunk)),
            ("resumableCurrentChunkSize", str(current)),
            ("resumableTotalSize", str(size)),
            ("resumableType", "application/octet-stream"),
            ("resumableIdentifier", identifier),
            ("resumableFilename", a.filename),
            ("resumableRelativePath", a.filename),
            ("resumableTotalChunks", str(total)),
        ]

    async def worker() -> None:
        conn = await Conn(u.hostname, u.port).open()
        while queue:
            n = queue.pop(0)
            offset, current = chunkRange(n)
            q = params(n, current)
            target = f"{u.path}?{urlencode(q)}"
            status, _, _ = await conn.request("GET", target)
            if status == 200:
                counts["tested_present"] += 1
                continue
            pre = "".join(
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n" for k, v in q
            )
            pre += (
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{a.filename}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n"
            )
            tail = f"\r\n--{boundary}--\r\n".encode()
            r0 = time.perf_counter()
            status, _, body = await conn.request(
                "POST", target, {"Content-Type": f"multipart/form-data; boundary={boundary}"},
                body=pre.encode("utf-8"), file=f, offset=offset, count=current, tail=tail,
            )
            lat.append(time.perf_counter() - r0)
            counts["posted"] += 1
            if status not in (200, 201):
                raise HTTPError(f"chunk {n} answered {status}: {body[:200]!r}")
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(a.sim)])
    seconds = time.perf_counter() - t0
    f.close()
    return {"seconds": seconds, "bytes": size, "chunks": total, "identifier": identifier, **counts,
            **latencyStats(lat)}


async def modeHead(a) -> dict:
    u = urlsplit(a.url)
    paths = a.paths.split(",") if a.paths else [u.path]
    headers = dict(h.split(":", 1) for h in a.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    per = a.n // a.conns
    lat: List[float] = []
    statuses: Dict[int, int] = {}
    conns = [await Conn(u.hostname, u.port).open() for _ in range(a.conns)]
    start = asyncio.Event()

    async def one(conn: Conn, path: str) -> None:
        await start.wait()
        perf = time.perf_counter
        for _ in range(per):
            r0 = perf()
            status, _, _ = await conn.request("HEAD", path, headers)
            lat.append(perf() - r0)
            statuses[status] = statuses.get(status, 0) + 1
        conn.close()

    tasks = [asyncio.create_task(one(c, paths[i % len(paths)])) for i, c in enumerate(conns)]
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rate": len(lat) / seconds, "statuses": statuses, **latencyStats(lat)}


async def modeHeadPoll(a) -> dict:
    """
    The HEAD side of `headload`, in a process of its own so that the
    latencies it records are the server's and the scheduler's, not those of
    a client loop busy sending 16 bodies.  Waits for one line on stdin, the
    time.monotonic() (system-wide on Linux) at which to stop; until then each
    of --conns keep-alive connections asks HEAD --path, waits --interval,
    asks again.
    """
    u = urlsplit(a.url)
    conns = [await Conn(u.hostname, u.port).open() for _ in range(a.conns)]
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if not line.strip():
        return {"seconds": 0.0, "statuses": {}, "wrong_offset": 0, **latencyStats([])}
    deadline = float(line)
    lat: List[float] = []
    statuses: Dict[int, int] = {}
    wrong = [0]

    async def one(conn: Conn) -> None:
        perf = time.perf_counter
        while time.monotonic() < deadline:
            r0 = perf()
            status, h, _ = await conn.request("HEAD", a.path, TUS)
            lat.append(perf() - r0)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200 and int(h.get(b"upload-offset", b"-1")) != a.length:
                wrong[0] += 1
            await asyncio.sleep(a.interval)
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*[one(c) for c in conns])
    return {"seconds": time.perf_counter() - t0, "statuses": statuses, "wrong_offset": wrong[0],
            **latencyStats(lat)}


async def modeHeadLoad(a) -> dict:
    """
    W8: --streams tus uploads stream at once, each connection starting a new
    upload of --size bytes (POST + one PATCH) as soon as its last one is
    done, until --duration seconds have passed; stream i always sends the
    source's i-th --size slice.  Once every stream has its first upload
    created, a `headpoll` process sends HEADs about --head-path (a finished
    upload of --head-length bytes) until the duration is up, so every HEAD
    is asked while all the streams are sending.
    """
    u = urlsplit(a.url)
    f = open(a.file, "rb")
    conns = [await Conn(u.hostname, u.port).open() for _ in range(a.streams)]
    poll = await asyncio.create_subprocess_exec(
        sys.executable, os.path.abspath(__file__), "headpoll", "--url", a.url, "--path", a.head_path,
        "--length", str(a.head_length), "--conns", str(a.head_conns), "--interval", str(a.head_interval),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert poll.stdin is not None
    uploads: List[Tuple[str, int]] = []
    lat: List[float] = []
    created = [0]
    allStreaming = asyncio.Event()
    start = asyncio.Event()
    deadline = [0.0]

    async def stream(i: int) -> None:
        conn = conns[i]
        await start.wait()
        first = True
        while True:
            path = await tusCreate(conn, u.path, a.size, f"w8-{i}.bin")
            if first:
                first = False
                created[0] += 1
                if created[0] == a.streams:
                    allStreaming.set()
            r0 = time.perf_counter()
            status, h, _ = await conn.request(
                "PATCH", path,
                {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
                file=f, offset=i * a.size, count=a.size,
            )
            lat.append(time.perf_counter() - r0)
            if status != 204:
                raise HTTPError(f"PATCH answered {status}")
            uploads.append((path, i))
            if time.monotonic() >= deadline[0]:
                break
        conn.close()

    async def heads() -> None:
        await allStreaming.wait()
        assert poll.stdin is not None
        poll.stdin.write(f"{deadline[0]!r}\n".encode())
        await poll.stdin.drain()

    tasks = [asyncio.create_task(stream(i)) for i in range(a.streams)]
    signal = asyncio.create_task(heads())
    t0 = time.perf_counter()
    deadline[0] = time.monotonic() + a.duration
    start.set()
    try:
        await asyncio.gather(*tasks)
    finally:
        if not allStreaming.is_set():
            signal.cancel()
            poll.stdin.write(b"\n")
        poll.stdin.close()
    seconds = time.perf_counter() - t0
    out, _ = await poll.communicate()
    f.close()
    head = json.loads(out.decode().strip().splitlines()[-1])
    if "error" in head:
        raise HTTPError(f"headpoll: {head['error']}")
    return {"seconds": seconds, "bytes": len(uploads) * a.size, "uploads": uploads,
            "upload_lat_p50_ms": latencyStats(lat)["lat_p50_ms"], "head": head}


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("patches")
    s.add_argument("--url", required=True)
    s.add_argument("--file", required=True)
    s.add_argument("--size", type=int, default=0)
    s.add_argument("--chunk", type=int, default=5 << 20)
    s = sub.add_parser("concurrent")
    s.add_argument("--url", required=True)
    s.add_argument("--file", required=True)
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--size", type=int, default=16 << 20)
    s.add_argument("--proto", choices=["tus", "put"], default="tus")
    s.add_argument("--tag", default="up")
    s = sub.add_parser("resumable")
    s.add_argument("--url", required=True)
    s.add_argument("--file", required=True)
    s.add_argument("--size", type=int, default=0)
    s.add_argument("--chunk", type=int, default=1 << 20)
    s.add_argument("--sim", type=int, default=3)
    s.add_argument("--filename", required=True)
    s = sub.add_parser("head")
    s.add_argument("--url", required=True)
    s.add_argument("--n", type=int, default=10000)
    s.add_argument("--conns", type=int, default=100)
    s.add_argument("--header", action="append", default=[])
    s.add_argument("--paths", default="", help="comma-separated paths; connection i asks about path i")
    s = sub.add_parser("headload")
    s.add_argument("--url", required=True)
    s.add_argument("--file", required=True)
    s.add_argument("--streams", type=int, default=16)
    s.add_argument("--size", type=int, default=64 << 20)
    s.add_argument("--duration", type=float, default=5.0)
    s.add_argument("--head-path", required=True)
    s.add_argument("--head-length", type=int, required=True)
    s.add_argument("--head-conns", type=int, default=4)
    s.add_argument("--head-interval", type=float, default=0.01)
    s = sub.add_parser("headpoll")
    s.add_argument("--url", required=True)
    s.add_argument("--path", required=True)
    s.add_argument("--length", type=int, required=True)
    s.add_argument("--conns", type=int, default=4)
    s.add_argument("--interval", type=float, default=0.01)
    a = p.parse_args()
    fn = {"patches": modePatches, "concurrent": modeConcurrent, "resumable": modeResumable,
          "head": modeHead, "headload": modeHeadLoad, "headpoll": modeHeadPoll}[a.mode]
    try:
        out = asyncio.run(fn(a))
    except Exception as e:  # one line for the harness, non-zero exit
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
