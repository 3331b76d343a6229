"""
kill -9 soak: a real chunkd process, uploads of every protocol going on at
once with their clients' own resume logic, and SIGKILLs at random moments,
each followed by a restart.

What it checks:

  - every answer that says what is stored -- a tus or facade HEAD's
    C{Upload-Offset}, a Resumable.js test GET's 200, and every 2xx of a
    write -- is checked against the source and the data file at once: the
    offset is no more than the client ever sent, no less than what the
    server had already acknowledged (an acknowledged byte is never lost),
    and the file's bytes up to it (or the chunk's bytes) are the source's.
    A violation is a I{non-durable report};
  - every completed file's sha256 (the data file, the sidecar's, the
    facade's finalize answer), once when it completes and again at the end,
    after the last restart.  A mismatch is a I{corrupt file}.

The clients, as the real ones behave:

  - tus (as tus-js-client): create, then PATCH the rest -- in one request,
    or in chunks of 1-4 MiB; after any error, HEAD, then PATCH from the
    offset it reports;
  - Resumable.js (testChunks, 1 MiB chunks, multipart): for each chunk a
    test GET, and a POST unless it answered 200; an error retries the
    chunk (test GET first);
  - the chunked-upload facade (as the camera app of its spec): create, 1 MiB
    chunks PATCHed in order (raw or multipart), after an error a HEAD to
    learn the offset, then finalize with its token (repeated until
    answered; a repeat gets the first answer).

What a SIGKILL can show: that chunkd records an offset or a chunk only
after its bytes are in the file, and that records and publications cut
at any instruction are finished or rolled back on the next request.  It
cannot show what a power cut would (the page cache survives a killed
process): that is what C{storage.durable}'s fdatasync is for.

    python bench/soak.py --cycles 300 --seed 1
    python bench/soak.py --cycles 3 --max-size 2MiB --json summary.json   # (the test suite)
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Set, Tuple
from urllib.parse import parse_qsl, urlencode

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
MiB = 1 << 20
BOUNDARY = "----soak7c1d0e"


def parseSize(text: str) -> int:
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "k": 1 << 10, "m": 1 << 20}
    lower = text.strip().lower()
    for unit, factor in units.items():
        if lower.endswith(unit):
            return int(float(lower[: -len(unit)]) * factor)
    return int(lower)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Stop(Exception):
    """The soak is over: a client gives up its upload."""


class ServerGone(Exception):
    """The connection failed or was cut: the server was killed."""


# -- the daemon ------------------------------------------------------------------------


class Chunkd:
    """
    chunkd as a process (C{python -m twisted chunkd}), started again after
    every kill on the same port and storage directory.
    """

    def __init__(self, workdir: str, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.storage = os.path.join(workdir, "storage")
        self.config = os.path.join(workdir, "chunkd.yaml")
        with open(self.config, "w") as f:
            # Durable storage, as shipped; checkpoints often, so kills land
            # between a long PATCH's recorded offsets.
            f.write(f"listen: \"tcp:port={port}:interface=127.0.0.1\"\n"
                    f"storage:\n  directory: {self.storage}\n  durable: true\n"
                    f"  checkpoint_every: 512KiB\n")
        self.logPath = os.path.join(workdir, "chunkd.log")
        self.process: Optional[subprocess.Popen] = None
        self.starts = 0

    def start(self, wait: bool = True) -> None:
        log = open(self.logPath, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "twisted", "--log-format=text", "chunkd", "--config", self.config],
            cwd=self.workdir, env=dict(os.environ, PYTHONPATH=ROOT), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.starts += 1
        if wait:
            self.waitForPort()

    def waitForPort(self, timeout: float = 60) -> None:
        assert self.process is not None
        deadline = time.time() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"chunkd exited with {self.process.returncode}; see {self.logPath}")
                if time.time() > deadline:
                    raise RuntimeError(f"chunkd did not start; see {self.logPath}")
                time.sleep(0.02)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def logText(self) -> str:
        with open(self.logPath, encoding="utf-8", errors="replace") as f:
            return f.read()


# -- what was seen ---------------------------------------------------------------------


class Ledger:
    """Counts shared by the clients, and every violation in words."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.completed: Dict[str, int] = {"tus": 0, "resumable": 0, "facade": 0}
        self.files: List[Tuple[str, str, str]] = []  # protocol, path, sha256
        self.nonDurable: List[str] = []
        self.corrupt: List[str] = []
        self.checks = 0
        self.retries = 0
        self.statuses: Dict[int, int] = {}
        #: resumptions from an offset inside the file (tus, facade), and
        #: chunks sent again after a failure (Resumable.js)
        self.resumed: Dict[str, int] = {"tus": 0, "resumable": 0, "facade": 0}

    def status(self, code: int) -> None:
        with self.lock:
            self.statuses[code] = self.statuses.get(code, 0) + 1

    def violation(self, kind: str, text: str) -> None:
        print(f"VIOLATION {kind}: {text}", flush=True)
        with self.lock:
            (self.nonDurable if kind == "non-durable" else self.corrupt).append(text)

    def complete(self, protocol: str, path: str, digest: str) -> None:
        with self.lock:
            self.completed[protocol] += 1
            self.files.append((protocol, path, digest))


def readRange(paths: List[str], start: int, length: int) -> Optional[bytes]:
    """Bytes of the first of C{paths} that exists (a file may be moving)."""
    for path in paths:
        try:
            with open(path, "rb") as f:
                f.seek(start)
                return f.read(length)
        except FileNotFoundError:
            continue
    return None


def fileSha(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


# -- the clients -------------------------------------------------------------------------


class Client:
    """
    One protocol's client: uploads random files, one after another, until
    told to stop, resuming after every failure.
    """

    protocol = ""

    def __init__(self, soak: "Soak", rng: random.Random, name: str) -> None:
        self.soak = soak
        self.rng = rng
        self.name = name
        self.ledger = soak.ledger
        self.storage = soak.daemon.storage

    # HTTP, with a fresh connection per request (a kill cuts any of them).

    def request(self, method: str, path: str, headers: Dict[str, str], body: bytes = b"",
                sent: Optional[List[int]] = None) -> Tuple[int, Dict[str, str], bytes]:
        """
        One request; C{sent[0]} counts the body bytes handed to the socket
        as they go.  Raises L{ServerGone} on any connection failure.
        """
        conn = http.client.HTTPConnection("127.0.0.1", self.soak.daemon.port, timeout=60)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            view = memoryview(body)
            for start in range(0, len(body), 256 * 1024):
                piece = view[start:start + 256 * 1024]
                if sent is not None:
                    sent[0] += len(piece)  # counted before: it may reach the server
                conn.send(piece)
            response = conn.getresponse()
            data = response.read()
            self.ledger.status(response.status)
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        except (OSError, http.client.HTTPException) as e:
            raise ServerGone(str(e)) from None
        finally:
            conn.close()

    def retry(self, what: str) -> None:
        if self.soak.stopping.is_set() and not self.soak.finishing:
            raise Stop()
        with self.ledger.lock:
            self.ledger.retries += 1
        time.sleep(0.05)

    def run(self) -> None:
        while not self.soak.stopping.is_set():
            size = self.rng.randint(1, self.soak.maxSize)
            data = self.rng.randbytes(size)
            try:
                self.upload(data)
            except Stop:
                return
            except Exception as e:  # a bug in the soak or a wrong answer: stop loudly
                self.ledger.violation("corrupt", f"{self.name}: {type(e).__name__}: {e}")
                self.soak.stopping.set()
                return

    def upload(self, data: bytes) -> None:
        raise NotImplementedError

    # Checks of what the server reports.

    def checkOffset(self, what: str, reported: int, acked: int, sent: int, data: bytes,
                    paths: List[str]) -> None:
        with self.ledger.lock:
            self.ledger.checks += 1
        if reported < acked:
            self.ledger.violation("non-durable", f"{what}: offset {reported} below the acknowledged {acked}")
        if reported > sent:
            self.ledger.violation("non-durable", f"{what}: offset {reported} beyond the {sent} bytes sent")
        if reported:
            onDisk = readRange(paths, 0, reported)
            if onDisk != data[:reported]:
                self.ledger.violation("non-durable", f"{what}: the file's first {reported} bytes "
                                                     "are not the source's")

    def checkComplete(self, what: str, path: str, data: bytes, reported: Optional[str] = None) -> None:
        digest = sha256(data)
        if reported is not None and reported != digest:
            self.ledger.violation("corrupt", f"{what}: the server reported sha256 {reported}")
        actual = fileSha(path)
        if actual != digest:
            self.ledger.violation("corrupt", f"{what}: {path} has sha256 {actual}, not {digest}")
        self.ledger.complete(self.protocol, path, digest)


class TusClient(Client):
    protocol = "tus"
    base = "/files/"

    def upload(self, data: bytes) -> None:
        headers = {"Tus-Resumable": "1.0.0"}
        while True:
            try:
                status, h, body = self.request("POST", self.base, dict(headers, **{"Upload-Length": str(len(data))}))
            except ServerGone:
                # Created or not, as far as we know: a new one (the other expires).
                self.retry("create")
                continue
            if status == 201:
                break
            raise RuntimeError(f"tus create answered {status} {body!r}")
        uploadId = h["location"].rstrip("/").rsplit("/", 1)[1]
        what = f"{self.name} tus {uploadId}"
        paths = [os.path.join(self.storage, "uploads", uploadId + ".data")]
        chunk = self.rng.choice([None, MiB, 4 * MiB])  # None: the rest in one PATCH
        acked = offset = 0
        sent = [0]
        maxSent = 0
        while offset < len(data):
            end = len(data) if chunk is None else min(len(data), offset + chunk)
            sent[0] = offset
            try:
                status, h, body = self.request(
                    "PATCH", self.base + uploadId,
                    dict(headers, **{"Upload-Offset": str(offset),
                                     "Content-Type": "application/offset+octet-stream"}),
                    data[offset:end], sent)
            except ServerGone:
                maxSent = max(maxSent, sent[0])
                offset = self.resume(uploadId, what, acked, maxSent, data, paths)
                continue
            maxSent = max(maxSent, sent[0])
            if status == 204:
                offset = int(h["upload-offset"])
                self.checkOffset(what + " PATCH", offset, acked, maxSent, data, paths)
                acked = max(acked, offset)
            elif status in (409, 423, 503):
                if self.soak.args.verbose:
                    print(f"{what}: PATCH at {offset} answered {status} {body!r}", flush=True)
                offset = self.resume(uploadId, what, acked, maxSent, data, paths)
            else:
                raise RuntimeError(f"{what}: PATCH answered {status} {body!r}")
        self.checkComplete(what, paths[0], data)

    def resume(self, uploadId: str, what: str, acked: int, sent: int, data: bytes, paths: List[str]) -> int:
        while True:
            self.retry("head")
            try:
                status, h, _ = self.request("HEAD", self.base + uploadId, {"Tus-Resumable": "1.0.0"})
            except ServerGone:
                continue
            if status != 200:
                raise RuntimeError(f"{what}: HEAD answered {status}")
            offset = int(h["upload-offset"])
            self.checkOffset(what + " HEAD", offset, acked, sent, data, paths)
            if 0 < offset < len(data):
                with self.ledger.lock:
                    self.ledger.resumed[self.protocol] += 1
            return offset


class ResumableClient(Client):
    protocol = "resumable"
    mount = "/resumable"
    chunkSize = MiB

    def upload(self, data: bytes) -> None:
        identifier = f"{len(data)}-soak-{uuid.uuid4().hex}"
        count = max(len(data) // self.chunkSize, 1)  # the last chunk runs to the end
        what = f"{self.name} resumable {identifier}"
        queries: Dict[int, str] = {}
        bounds: Dict[int, Tuple[int, int]] = {}
        started: Set[int] = set()
        retried: Set[int] = set()
        acked: List[int] = []
        answer: Dict[str, Any] = {}
        for number in range(1, count + 1):
            start = (number - 1) * self.chunkSize
            end = len(data) if number == count else number * self.chunkSize
            bounds[number] = (start, end)
            queries[number] = urlencode([
                ("resumableChunkNumber", number), ("resumableChunkSize", self.chunkSize),
                ("resumableCurrentChunkSize", end - start), ("resumableTotalSize", len(data)),
                ("resumableType", "application/octet-stream"), ("resumableIdentifier", identifier),
                ("resumableFilename", "soak.bin"), ("resumableRelativePath", "soak.bin"),
                ("resumableTotalChunks", count)])
            while True:
                try:
                    status, _, body = self.request("GET", f"{self.mount}?{queries[number]}", {})
                    if status == 200:
                        break
                    if status != 204:
                        raise RuntimeError(f"{what}: test GET answered {status} {body!r}")
                    started.add(number)
                    status, _, body = self.request(
                        "POST", f"{self.mount}?{queries[number]}",
                        {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
                        self.form(queries[number], data[start:end]))
                except ServerGone:
                    if number not in retried:
                        retried.add(number)
                        with self.ledger.lock:
                            self.ledger.resumed[self.protocol] += 1
                    self.retry("chunk")
                    continue
                if status == 200:
                    break
                if status not in (503, 507):
                    raise RuntimeError(f"{what}: chunk {number} answered {status} {body!r}")
                self.retry("chunk")
            answer = json.loads(body)
            self.checkChunk(what, answer["uploadId"], number, bounds[number], started, data)
            acked.append(number)
            if len(acked) > 1 and self.rng.random() < 0.2:
                # An acknowledged chunk is never lost: test an earlier one again.
                again = self.rng.choice(acked[:-1])
                try:
                    status, _, body = self.request("GET", f"{self.mount}?{queries[again]}", {})
                except ServerGone:
                    continue
                if status != 200:
                    self.ledger.violation("non-durable", f"{what}: acknowledged chunk {again} now tests {status}")
                else:
                    self.checkChunk(what, answer["uploadId"], again, bounds[again], started, data)
        if not answer.get("complete"):
            raise RuntimeError(f"{what}: every chunk stored, but not complete: {answer}")
        path = os.path.join(self.storage, "complete", answer["uploadId"])
        with open(path + ".json") as f:
            sidecar = json.load(f)
        self.checkComplete(what, path, data, sidecar["sha256"])

    def form(self, query: str, content: bytes) -> bytes:
        """The body Resumable.js's FormData makes: the parameters, then the file."""
        parts = [f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
                 for k, v in parse_qsl(query)]
        parts.append(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"blob\"\r\n"
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
        parts.append(f"--{BOUNDARY}--\r\n".encode())
        return b"".join(parts)

    def checkChunk(self, what: str, uploadId: str, number: int, bounds: Tuple[int, int],
                   started: Set[int], data: bytes) -> None:
        with self.ledger.lock:
            self.ledger.checks += 1
        if number not in started:
            self.ledger.violation("non-durable", f"{what}: chunk {number} reported stored, never sent")
            return
        start, end = bounds
        paths = [os.path.join(self.storage, "uploads", uploadId + ".data"),
                 os.path.join(self.storage, "complete", uploadId)]
        if readRange(paths, start, end - start) != data[start:end]:
            self.ledger.violation("non-durable", f"{what}: chunk {number} reported stored, its bytes differ")


class FacadeClient(Client):
    protocol = "facade"
    mount = "/uploads"
    chunkSize = MiB

    def upload(self, data: bytes) -> None:
        while True:
            try:
                status, h, body = self.request("POST", self.mount,
                                               {"Tus-Resumable": "1.0.0", "Upload-Length": str(len(data))})
            except ServerGone:
                self.retry("create")
                continue
            if status == 201:
                break
            raise RuntimeError(f"facade create answered {status} {body!r}")
        uploadId = h["location"].rstrip("/").rsplit("/", 1)[1]
        token = h["upload-token"]
        what = f"{self.name} facade {uploadId}"
        paths = [os.path.join(self.storage, "uploads", uploadId + ".data")]
        multipart = self.rng.random() < 0.5
        acked = offset = maxSent = 0
        while offset < len(data):
            piece = data[offset:offset + self.chunkSize]
            headers = {"Tus-Resumable": "1.0.0", "Upload-Offset": str(offset)}
            if multipart:
                headers["Content-Type"] = f"multipart/form-data; boundary={BOUNDARY}"
                body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"chunk\"; filename=\"blob\"\r\n"
                        f"Content-Type: application/octet-stream\r\n\r\n").encode() + piece + \
                    f"\r\n--{BOUNDARY}--\r\n".encode()
            else:
                headers["Content-Type"] = "application/offset+octet-stream"
                body = piece
            try:
                status, h, text = self.request("PATCH", f"{self.mount}/{uploadId}", headers, body)
            except ServerGone:
                # Whatever of the chunk reached the server may count.
                maxSent = max(maxSent, offset + len(piece))
                offset = self.resume(uploadId, what, acked, maxSent, data, paths)
                continue
            maxSent = max(maxSent, offset + len(piece))
            if status == 204:
                offset = int(h["upload-offset"])
                self.checkOffset(what + " PATCH", offset, acked, maxSent, data, paths)
                acked = max(acked, offset)
            elif status in (409, 423, 503):
                if self.soak.args.verbose:
                    print(f"{what}: PATCH at {offset} answered {status} {text!r}", flush=True)
                offset = self.resume(uploadId, what, acked, maxSent, data, paths)
            else:
                raise RuntimeError(f"{what}: PATCH answered {status} {text!r}")
        filename = f"soak-{uploadId}.bin"
        payload = json.dumps({"uploadId": uploadId, "filename": filename, "uploadToken": token}).encode()
        while True:
            try:
                status, _, text = self.request("POST", f"{self.mount}/finalize",
                                               {"Content-Type": "application/json"}, payload)
            except ServerGone:
                self.retry("finalize")
                continue
            if status == 200:
                break
            if status not in (423, 503):
                raise RuntimeError(f"{what}: finalize answered {status} {text!r}")
            self.retry("finalize")
        answer = json.loads(text)
        if answer["size"] != len(data):
            self.ledger.violation("corrupt", f"{what}: finalize says {answer['size']} bytes, not {len(data)}")
        with open(os.path.join(self.storage, "complete", filename + ".json")) as f:
            sidecar = json.load(f)
        self.checkComplete(what, sidecar["path"], data, answer["checksum"].split(":", 1)[1])

    def resume(self, uploadId: str, what: str, acked: int, sent: int, data: bytes, paths: List[str]) -> int:
        while True:
            self.retry("head")
            try:
                status, h, _ = self.request("HEAD", f"{self.mount}/{uploadId}", {"Tus-Resumable": "1.0.0"})
            except ServerGone:
                continue
            if status != 200:
                raise RuntimeError(f"{what}: HEAD answered {status}")
            offset = int(h["upload-offset"])
            self.checkOffset(what + " HEAD", offset, acked, sent, data, paths)
            if 0 < offset < len(data):
                with self.ledger.lock:
                    self.ledger.resumed[self.protocol] += 1
            return offset


# -- the soak ----------------------------------------------------------------------------


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.maxSize = parseSize(args.max_size)
        self.workdir = tempfile.mkdtemp(prefix="chunkd-soak-", dir=args.workdir)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.daemon = Chunkd(self.workdir, port)
        self.ledger = Ledger()
        self.stopping = threading.Event()
        self.finishing = False
        self.reverified = 0

    def verifyAndRemove(self, files: List[Tuple[str, str, str]]) -> None:
        """
        Read again files that completed before the last kill: each must
        have survived it as it was.  Then remove them (with their
        sidecars), so that hundreds of cycles do not fill the disk.
        """
        for protocol, path, digest in files:
            if not os.path.exists(path) or fileSha(path) != digest:
                self.ledger.violation("corrupt", f"after a restart, {path} ({protocol}) is not what completed")
            for leftover in (path, path + ".json"):
                try:
                    os.unlink(leftover)
                except FileNotFoundError:
                    pass
            self.reverified += 1

    def run(self) -> Dict[str, Any]:
        args = self.args
        started = time.time()
        self.daemon.start()
        clients: List[Client] = []
        for kind in (TusClient, ResumableClient, FacadeClient):
            for n in range(args.clients):
                clients.append(kind(self, random.Random(self.rng.random()), f"{kind.protocol}{n}"))
        threads = [threading.Thread(target=c.run, name=c.name, daemon=True) for c in clients]
        for t in threads:
            t.start()
        kills = 0
        for cycle in range(args.cycles):
            if self.stopping.is_set():
                break
            quiet = args.quiet_every and (cycle + 1) % args.quiet_every == 0
            time.sleep(args.quiet_run if quiet else self.rng.uniform(args.min_run, args.max_run))
            with self.ledger.lock:
                survivors, self.ledger.files = self.ledger.files, []
            self.daemon.kill()
            kills += 1
            # Now and then the next kill lands while chunkd starts (reconciling).
            early = self.rng.random() < 0.1
            self.daemon.start(wait=not early)
            if early:
                time.sleep(self.rng.uniform(0.0, 0.6))
                self.daemon.kill()
                kills += 1
                self.daemon.start()
            self.verifyAndRemove(survivors)
            if (cycle + 1) % 25 == 0:
                print(f"[{time.strftime('%H:%M:%S')}] {cycle + 1} cycles, {kills} kills, "
                      f"completed {self.ledger.completed}", flush=True)
        # Let every upload under way finish on a server left alone, then stop.
        self.finishing = True
        self.stopping.set()
        for t in threads:
            t.join(timeout=600)
        hung = [t.name for t in threads if t.is_alive()]
        # Every completed file not yet checked again (since the last restart).
        with self.ledger.lock:
            rest, self.ledger.files = self.ledger.files, []
        self.verifyAndRemove(rest)
        self.daemon.stop()
        logText = self.daemon.logText()
        summary = {
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
                       f"Python {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
            "seed": args.seed,
            "cycles": args.cycles,
            "kills": kills,
            "starts": self.daemon.starts,
            "completed": dict(self.ledger.completed),
            "completedTotal": sum(self.ledger.completed.values()),
            "checks": self.ledger.checks,
            "completedFilesCheckedAfterARestart": self.reverified,
            "resumed": dict(self.ledger.resumed),
            "retries": self.ledger.retries,
            "statuses": {str(k): v for k, v in sorted(self.ledger.statuses.items())},
            "nonDurableReports": len(self.ledger.nonDurable),
            "corruptFiles": len(self.ledger.corrupt),
            "violations": self.ledger.nonDurable + self.ledger.corrupt,
            "hungClients": hung,
            "logTracebacks": logText.count("Traceback"),
            "seconds": round(time.time() - started, 1),
        }
        if not args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            summary["workdir"] = self.workdir
        return summary


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=200, help="kill-and-restart cycles")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=2, help="clients of each protocol")
    parser.add_argument("--max-size", default="24MiB", help="largest upload")
    parser.add_argument("--min-run", type=float, default=0.3, help="shortest run between kills, seconds")
    parser.add_argument("--max-run", type=float, default=2.5, help="longest run between kills, seconds")
    parser.add_argument("--quiet-every", type=int, default=20,
                        help="every this many cycles a longer run (0: never); see --quiet-run")
    parser.add_argument("--quiet-run", type=float, default=12.0,
                        help="the longer run, seconds: longer than the 10 s chunkd waits before it "
                             "removes the data file of a Resumable.js upload whose creation a kill cut")
    parser.add_argument("--workdir", default=None, help="where the storage goes (a temporary directory in it)")
    parser.add_argument("--keep", action="store_true", help="keep the storage and log")
    parser.add_argument("--json", default=None, help="write the summary here too")
    parser.add_argument("--verbose", action="store_true", help="print every 409, 423 and 503 a client meets")
    args = parser.parse_args(argv)
    soak = Soak(args)
    try:
        summary = soak.run()
    finally:
        soak.daemon.stop()
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    ok = (not summary["nonDurableReports"] and not summary["corruptFiles"] and not summary["hungClients"]
          and summary["completedTotal"] > 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
