"""
Shared test scaffolding, the one module test modules import helpers from:

 - a real chunkd Site on 127.0.0.1 (port 0) over a temporary storage
   directory (or a small tmpfs, to fill up), a treq client with its own
   connection pool, and the tus client calls on top of it;
 - a raw socket client for what treq cannot send (chunked bodies with
   trailers, bodies cut off mid-way);
 - chunkd as a process of its own (C{python -m twisted chunkd});
 - stand-ins for the socket-free unit tests: a producer that counts its
   pauses and resumes, and a body sink that records what it is given.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import yaml
from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from chunkd.disk import DiskService

if TYPE_CHECKING:
    from chunkd.config import Config

try:
    from tusclient import client as tusclient
except ImportError:  # pragma: no cover - tuspy is a test dependency
    tusclient = None

#: the repository's top directory (what a chunkd child process imports).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


class ServerTestCase(unittest.TestCase):
    """
    Starts chunkd on a real listening socket for each test.

    @cvar overrides: dotted config keys for this test class.
    @cvar tmpfsSize: store on a real, small file system of this size (a
        tmpfs, see L{mountSmallTmpfs}) instead of a temporary directory:
        for tests of a full disk.
    """

    overrides: Dict[str, object] = {}
    tmpfsSize: Optional[str] = None

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        if self.tmpfsSize is not None:
            self.storage = mountSmallTmpfs(self, self.tmpfsSize)
        else:
            self.storage = tempfile.mkdtemp(prefix="chunkd-test-")
        yield self.startServer(dict(self.overrides))

    @defer.inlineCallbacks
    def startServer(self, overrides: Dict[str, object]) -> Any:
        # The whole application, imported only by the tests that serve it:
        # the socket-free unit tests need none of it.
        from chunkd.app import buildSite
        from chunkd.config import loadConfig
        from chunkd.store import UploadStore

        overrides.setdefault("storage.directory", self.storage)
        overrides.setdefault("storage.durable", False)
        self.config: Config = loadConfig(None, overrides)
        self.disk = DiskService(reactor, self.config.disk.threads)
        self.disk.startService()
        self.store = UploadStore(self.config.storage.directory, self.disk, durable=self.config.storage.durable)
        self.site = buildSite(self.config, self.store, self.disk)
        self.addCleanup(self.disk.stopService)
        self.port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.site)
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        self.client = HTTPClient(Agent(reactor, pool=self.pool))

    def url(self, path: str) -> str:
        return self.base + path

    def dataOf(self, uploadId: str) -> bytes:
        with open(self.store.dataPath(uploadId), "rb") as f:
            return f.read()


class TusTestCase(ServerTestCase):
    """
    A server test that speaks tus 1.0.0 at C{/files/} through treq.
    """

    @defer.inlineCallbacks
    def create(self, length: Optional[int] = None, headers: Optional[Dict[str, str]] = None, **kw: Any) -> Any:
        h = dict(TUS)
        if length is not None:
            h["Upload-Length"] = str(length)
        h.update(headers or {})
        response = yield self.client.post(self.url("/files/"), headers=h, **kw)
        yield response.content()
        return response

    @defer.inlineCallbacks
    def createId(self, length: Optional[int] = None, headers: Optional[Dict[str, str]] = None) -> Any:
        response = yield self.create(length, headers)
        self.assertEqual(response.code, 201)
        location = response.headers.getRawHeaders("location")[0]
        return location.rsplit("/", 1)[1]

    @defer.inlineCallbacks
    def patch(self, uploadId: str, offset: int, body: bytes, headers: Optional[Dict[str, str]] = None) -> Any:
        h = dict(TUS, **{"Upload-Offset": str(offset), "Content-Type": OCTETS})
        h.update(headers or {})
        response = yield self.client.patch(self.url(f"/files/{uploadId}"), data=body, headers=h)
        text = yield response.content()
        response.text_ = text
        return response

    @defer.inlineCallbacks
    def head(self, uploadId: str, headers: Optional[Dict[str, str]] = None) -> Any:
        h = dict(TUS)
        h.update(headers or {})
        response = yield self.client.head(self.url(f"/files/{uploadId}"), headers=h)
        yield response.content()
        return response


def h(response: Any, name: str) -> Optional[str]:
    """The first value of header C{name} in a treq C{response}, or C{None}."""
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


class _RawResponse(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(self.data)


@defer.inlineCallbacks
def rawRequest(port: int, payload: bytes, closeAfter: Optional[float] = None) -> Any:
    """
    Send C{payload} verbatim over a new connection; return everything the
    server answered until it closed (or, with C{closeAfter}, cut the
    connection that many seconds after sending and return what came).
    """
    proto = _RawResponse()
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), proto)
    proto.transport.write(payload)
    if closeAfter is not None:
        yield deferLater(closeAfter)
        proto.transport.abortConnection()
    result = yield proto.done
    return result


class RawConnection(Protocol):
    """
    A client connection driven byte by byte: write parts of a request
    when the test decides, and wait until the answer so far satisfies a
    condition (an interim response arrived, a final one completed).
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[bytes] = defer.Deferred()
        self._waiting: List[Tuple[Any, "defer.Deferred[bytes]"]] = []

    @classmethod
    @defer.inlineCallbacks
    def open(cls, port: int) -> Any:
        connection = cls()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), connection)
        return connection

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for entry in list(self._waiting):
            condition, d = entry
            if condition(self.received):
                self._waiting.remove(entry)
                d.callback(self.received)

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(self.received)
        for _, d in self._waiting:
            d.errback(AssertionError(f"connection closed; received {self.received[-2000:]!r}"))
        self._waiting = []

    def waitFor(self, condition: Any, timeout: float = 15) -> "defer.Deferred[bytes]":
        """Fire with everything received once C{condition(received)} holds."""
        if condition(self.received):
            return defer.succeed(self.received)
        d: defer.Deferred[bytes] = defer.Deferred()
        self._waiting.append((condition, d))
        return d.addTimeout(timeout, reactor)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


def httpResponses(raw: bytes) -> List["tuple[int, Dict[str, str], bytes]"]:
    """
    Every complete response in C{raw}, interim ones included, in order:
    status, headers (lower-cased names; repeated ones joined with ", ")
    and body (by Content-Length or chunked; none for 1xx, 204 and 304).
    Trailers of a chunked body are not read (chunkd sends none).
    """
    found: List[Tuple[int, Dict[str, str], bytes]] = []
    while b"\r\n\r\n" in raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: Dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = headers[key] + ", " + value.strip() if key in headers else value.strip()
        if status >= 200 and headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while b"\r\n" in rest:
                size, _, after = rest.partition(b"\r\n")
                n = int(size.split(b";")[0], 16)
                if len(after) < n + 2:
                    return found
                body, rest = body + after[:n], after[n + 2:]
                if n == 0:
                    break
            else:
                break
            found.append((status, headers, body))
            raw = rest
            continue
        length = 0 if status < 200 or status in (204, 304) else int(headers.get("content-length", "0"))
        if len(rest) < length:
            break
        found.append((status, headers, rest[:length]))
        raw = rest[length:]
    return found


def finalResponse(raw: bytes) -> bool:
    """Whether C{raw} holds a complete final (non-1xx) response."""
    return any(status >= 200 for status, _, _ in httpResponses(raw))


def uploadFiles(storage: str) -> List[str]:
    """
    The files of uploads in a storage directory's C{uploads/}: everything
    there but the store's space reserve, which belongs to no upload.
    """
    directory = os.path.join(storage, "uploads")
    if not os.path.isdir(directory):
        return []
    return sorted(name for name in os.listdir(directory) if name != "reserve")


def deferLater(seconds: float) -> "defer.Deferred[None]":
    from twisted.internet.task import deferLater as _later

    return _later(reactor, seconds, lambda: None)


def parseResponse(raw: bytes) -> "tuple[int, Dict[str, str], bytes]":
    """
    Status, headers (lower-cased names) and body of the last response in
    C{raw} (skipping any C{100 Continue}).
    """
    while raw.startswith(b"HTTP/1.1 100"):
        raw = raw.split(b"\r\n\r\n", 1)[1]
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def mountSmallTmpfs(case: unittest.TestCase, size: str = "4m") -> str:
    """
    A real, small file system to fill up: a tmpfs of C{size}, unmounted and
    removed after the test.  Skips the test where mounting is not allowed.
    """
    import subprocess

    mountpoint = tempfile.mkdtemp(prefix="chunkd-full-")
    case.addCleanup(os.rmdir, mountpoint)  # runs last, once unmounted
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mountpoint],
                            capture_output=True)
    if result.returncode != 0:
        raise unittest.SkipTest(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    case.addCleanup(subprocess.run, ["umount", "-l", mountpoint])
    return mountpoint


def fillDisk(case: unittest.TestCase, directory: str) -> str:
    """
    Fill every free block of C{directory}'s (small, real) file system with
    one file, removed at the end of the test; return its path.
    """
    filler = os.path.join(directory, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError as e:
        case.assertEqual(e.errno, errno.ENOSPC)
    finally:
        os.close(fd)
    case.addCleanup(lambda: os.path.exists(filler) and os.unlink(filler))
    return filler


def randomBytes(n: int) -> bytes:
    return os.urandom(n)


def patchHead(uploadId: str, offset: int, length: int, extra: str = "") -> bytes:
    """
    The head of a tus PATCH of C{length} body bytes at C{offset}, for
    L{rawRequest} or a plain socket; C{extra} holds more header lines.
    """
    return (
        f"PATCH /files/{uploadId} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        f"Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


BOUNDARY = b"----chunkd-facade-test-7f3a"


def multipartBody(data: bytes, fields: Optional[Dict[str, str]] = None, name: str = "chunk",
                  boundary: bytes = BOUNDARY) -> bytes:
    """
    A multipart/form-data body as browsers and multer clients send it: any
    fields first, then the chunk as a file part.
    """
    parts: List[bytes] = []
    for key, value in (fields or {}).items():
        parts.append(b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
                     % (boundary, key.encode(), value.encode()))
    parts.append(b"--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"blob\"\r\n"
                 b"Content-Type: application/octet-stream\r\n\r\n%s\r\n" % (boundary, name.encode(), data))
    parts.append(b"--%s--\r\n" % boundary)
    return b"".join(parts)


def requireTuspy() -> Any:
    """
    tuspy's client module; skips the test where tuspy is not installed.
    """
    if tusclient is None:
        raise unittest.SkipTest("tuspy is not installed (pip install '.[test]')")
    return tusclient


def tuspyUploader(endpoint: str, data: bytes, chunkSize: int, **kw: Any) -> Any:
    """
    A tuspy uploader of C{data} for the tus creation URL C{endpoint} (C{kw}
    as for C{TusClient.uploader}).  tuspy is synchronous and already speaks
    HTTP here when given an upload's C{url}: call this, and C{upload()}, in
    a thread while the reactor serves.
    """
    client = requireTuspy().TusClient(endpoint)
    return client.uploader(file_stream=io.BytesIO(data), chunk_size=chunkSize, **kw)


# -- chunkd as a process of its own ----------------------------------------------------


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: list, cwd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """
    C{python -m twisted *args} in C{cwd}, importing this checkout's chunkd.
    """
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "twisted", *args], cwd=cwd, env=env,
                          capture_output=True, timeout=timeout)


# -- stand-ins for socket-free unit tests ----------------------------------------------


class CountingProducer:
    """
    A push producer that only counts how often it was paused and resumed.
    """

    def __init__(self) -> None:
        self.pauses = 0
        self.resumes = 0

    def pauseProducing(self) -> None:
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.resumes += 1

    def stopProducing(self) -> None:
        pass

    @property
    def paused(self) -> bool:
        return self.pauses > self.resumes


class RecordingSink:
    """
    An in-memory L{chunkd.streaming.BodySink}: keeps every piece it is given
    (as bytes, in order) and how the body ended; its L{result} is
    C{outcome} (a value or a L{Failure}) for every caller.

    @ivar ended: C{None} while the body goes on, then C{("bodyEnded",
        trailers)} or C{("bodyFailed", failure)}.
    @ivar events: the calls in order: C{("data", bytes)}, C{("bodyEnded",
        trailers)} or C{("bodyFailed", failure)}.
    """

    def __init__(self, outcome: Any = None) -> None:
        self.pieces: List[bytes] = []
        self.events: List[Any] = []
        self.ended: Optional[Any] = None
        self.outcome = outcome

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)

    def dataReceived(self, data: bytes) -> None:
        piece = bytes(data)
        self.pieces.append(piece)
        self.events.append(("data", piece))

    def bodyEnded(self, trailers: Headers) -> None:
        self.ended = ("bodyEnded", trailers)
        self.events.append(self.ended)

    def bodyFailed(self, reason: Failure) -> None:
        self.ended = ("bodyFailed", reason)
        self.events.append(self.ended)

    def result(self) -> "defer.Deferred[Any]":
        if isinstance(self.outcome, Failure):
            return defer.fail(self.outcome)
        return defer.succeed(self.outcome)


def startedDisk(case: unittest.TestCase, threads: int = 2) -> DiskService:
    """
    A real L{DiskService} on the reactor, started now and stopped (once
    every job is done) when C{case} is cleaned up.
    """
    disk = DiskService(reactor, threads)
    disk.startService()
    case.addCleanup(disk.stopService)
    return disk


def openTempFile(case: unittest.TestCase, content: bytes = b"") -> Tuple[str, int]:
    """
    A new temporary file holding C{content}, open for reading and writing:
    C{(path, fd)}.  Closed and removed when C{case} is cleaned up: open it
    before L{startedDisk}, so that the disk service stops (and its last
    write ends) before the file is closed.
    """
    fd, path = tempfile.mkstemp(prefix="chunkd-unit-")
    case.addCleanup(os.unlink, path)
    case.addCleanup(os.close, fd)
    os.write(fd, content)
    return path, fd


def readFile(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# `python -m twisted` ends by re-raising the signal that stopped it, which
# systemd counts as a clean exit for SIGTERM.
CLEAN_EXIT = (0, -signal.SIGTERM)


def waitForPort(port: int, process: subprocess.Popen, timeout: float = 20) -> bool:
    """
    Wait until something accepts on 127.0.0.1:C{port}; C{False} if
    C{process} exits or C{timeout} seconds pass first.
    """
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                return False
            time.sleep(0.05)


class Daemon:
    """
    A real chunkd process (C{python -m twisted chunkd}) on a free port of
    127.0.0.1, with its config file and log in a directory of its own; the
    constructor returns once the port accepts.
    """

    def __init__(self, config: Dict, env: Optional[Dict[str, str]] = None,
                 alsoListen: Sequence[str] = (), ownCwd: bool = False) -> None:
        """
        @param alsoListen: more endpoints to listen on, after the port
            this waits for.
        @param ownCwd: run in its own directory, so that a test can see any
            file a relative path would have put beside the storage.
        """
        self.dir = tempfile.mkdtemp(prefix="chunkd-ops-")
        self.port = freePort()
        self.configPath = os.path.join(self.dir, "chunkd.yaml")
        self.config = dict(config, listen=[f"tcp:port={self.port}:interface=127.0.0.1", *alsoListen])
        self.config.setdefault("storage", {"directory": os.path.join(self.dir, "data")})
        self.writeConfig(self.config)
        self.logPath = os.path.join(self.dir, "log")
        self.log = open(self.logPath, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "twisted", "--log-format=text", "chunkd", "--config", self.configPath],
            env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})), stdout=self.log, stderr=subprocess.STDOUT,
            cwd=self.dir if ownCwd else None)
        if not waitForPort(self.port, self.process):
            raise AssertionError("chunkd did not start:\n" + self.logText())

    def writeConfig(self, config: object) -> None:
        with open(self.configPath, "w") as f:
            f.write(config if isinstance(config, str) else yaml.safe_dump(config))

    def logText(self) -> str:
        with open(self.logPath, encoding="utf-8", errors="replace") as f:
            return f.read()

    def waitForLog(self, fragment: str, timeout: float = 10) -> None:
        deadline = time.time() + timeout
        while fragment not in self.logText():
            if time.time() > deadline:
                raise AssertionError(f"{fragment!r} never logged:\n{self.logText()}")
            time.sleep(0.05)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def request(self, raw: bytes) -> bytes:
        with self.connect() as s:
            s.sendall(raw)
            return readResponse(s)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def makeCertificate(directory: str) -> Tuple[str, str, bytes]:
    """
    A self-signed certificate for C{localhost} and 127.0.0.1 and its key,
    written as PEM files; returns their paths and the certificate's PEM.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certPem = certificate.public_bytes(serialization.Encoding.PEM)
    keyPath, certPath = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
    with open(keyPath, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(certPath, "wb") as f:
        f.write(certPem)
    return keyPath, certPath, certPem


def tusCreate(daemon: Daemon, length: int, extra: bytes = b"") -> str:
    """Create a tus upload of C{length} bytes on C{daemon}: its id."""
    answer = daemon.request(
        b"POST /files/ HTTP/1.1\r\nHost: h\r\nTus-Resumable: 1.0.0\r\nUpload-Length: %d\r\n"
        b"Content-Length: 0\r\n%s\r\n" % (length, extra))
    assert answer.startswith(b"HTTP/1.1 201"), answer
    location = [l for l in answer.split(b"\r\n") if l.lower().startswith(b"location:")][0]
    return location.split(b"/")[-1].strip().decode()


def readResponse(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
            while len(body) < length:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
    return head + b"\r\n\r\n" + body


class GlusterVolume:
    """
    A real GlusterFS volume for a test: a private glusterd, a one-brick
    volume under a temporary directory, and C{mounts} FUSE mounts of it --
    to chunkd processes on different mounts it is what a shared file
    system is to processes on different hosts.  Set up with the options
    chunkd needs (deploy/README.md: client caches off, direct I/O, zero
    attribute and entry timeouts) and torn down when the test ends.

    Skips, naming the reason, where glusterd is not installed or FUSE is
    not available; C{.ci/run} installs Debian's glusterfs-server and
    glusterfs-client.
    """

    performanceOff = ("stat-prefetch", "quick-read", "write-behind", "open-behind", "io-cache",
                      "read-ahead", "readdir-ahead")
    #: volume options beyond the caches, set before the volume starts
    options: Tuple[Tuple[str, str], ...] = ()

    def serverCommand(self) -> List[str]:
        """What glusterd runs under (a network namespace, in a subclass)."""
        return []

    def mountCommand(self, n: int) -> List[str]:
        """What mount number C{n} runs under."""
        return []

    @property
    def host(self) -> str:
        return socket.gethostname()  # the CLI refuses 127.0.0.1 and localhost

    def __init__(self, case: unittest.TestCase, mounts: int = 2) -> None:
        import shutil

        if shutil.which("glusterd") is None or shutil.which("gluster") is None:
            raise unittest.SkipTest("GlusterFS is not installed (apt-get install glusterfs-server "
                                    "glusterfs-client; .ci/run does)")
        if not os.path.exists("/dev/fuse"):
            raise unittest.SkipTest("no /dev/fuse on this machine: GlusterFS cannot be mounted")
        if os.geteuid() != 0:
            raise unittest.SkipTest("mounting a GlusterFS volume needs root")
        self.base = tempfile.mkdtemp(prefix="chunkd-gfx-", dir="/var/tmp")
        case.addCleanup(self.teardown)
        for name in ("lib", "run", "log", "brick"):
            os.makedirs(os.path.join(self.base, name))
        self.volfile = os.path.join(self.base, "glusterd.vol")
        with open(self.volfile, "w") as f:
            f.write(f"""volume management
    type mgmt/glusterd
    option working-directory {self.base}/lib
    option run-directory {self.base}/run
    option glusterd-sockfile {self.base}/run/glusterd.socket
    option transport-type socket
    option transport.socket.listen-port 24007
    option ping-timeout 0
    option event-threads 1
end-volume
""")
        self.glusterd = subprocess.Popen(
            self.serverCommand() + ["glusterd", "-N", "-f", self.volfile, "-l", f"{self.base}/log/glusterd.log",
             "-p", f"{self.base}/glusterd.pid"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while self.cli("volume", "list", check=False).returncode != 0:
            if time.time() > deadline or self.glusterd.poll() is not None:
                raise AssertionError("glusterd did not start: " + self.logTail("glusterd.log"))
            time.sleep(0.05)
        host = self.host
        self.cli("volume", "create", "chunkd", f"{host}:{self.base}/brick", "force")
        for option in self.performanceOff:
            self.cli("volume", "set", "chunkd", f"performance.{option}", "off")
        for name, value in self.options:
            self.cli("volume", "set", "chunkd", name, value)
        self.cli("volume", "start", "chunkd")
        self.mounts: List[str] = []
        for n in range(1, mounts + 1):
            mountpoint = os.path.join(self.base, f"m{n}")
            os.makedirs(mountpoint)
            result = subprocess.run(
                self.mountCommand(n) + ["mount", "-t", "glusterfs", "-o",
                 f"log-file={self.base}/log/m{n}.log,attribute-timeout=0,entry-timeout=0,"
                 "negative-timeout=0,direct-io-mode=enable", f"{host}:/chunkd", mountpoint],
                capture_output=True, timeout=60)
            if result.returncode != 0:
                raise AssertionError(f"mounting GlusterFS failed: {result.stderr.decode().strip()} "
                                     + self.logTail(f"m{n}.log"))
            self.mounts.append(mountpoint)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["gluster", "--mode=script", f"--glusterd-sock={self.base}/run/glusterd.socket",
             f"--log-file={self.base}/log/cli.log", *args], capture_output=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"gluster {' '.join(args)}: {result.stdout.decode()} {result.stderr.decode()}")
        return result

    def logTail(self, name: str) -> str:
        try:
            with open(os.path.join(self.base, "log", name), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def teardown(self) -> None:
        import shutil

        with open("/proc/self/mounts") as f:
            mounted = [line.split()[1] for line in f if line.split()[1].startswith(self.base + "/")]
        for mountpoint in mounted:
            if subprocess.run(["umount", mountpoint], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mountpoint], capture_output=True)
        # glusterd and the brick (and self-heal) processes it started: only
        # those whose command line names this fixture's directory.
        pids = []
        for root, _, files in os.walk(os.path.join(self.base, "run")):
            pids += [os.path.join(root, n) for n in files if n.endswith(".pid")]
        victims = [self.glusterd.pid]
        junk: List[str] = []
        for pidfile in pids:
            try:
                with open(pidfile) as f:
                    pid = int(f.read().strip())
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = f.read().decode(errors="replace").split("\0")
            except (OSError, ValueError):
                continue
            if any(self.base in a for a in args):
                victims.append(pid)
                # bricks keep a socket and a log outside the base directory
                junk += [args[i + 1] for i, a in enumerate(args[:-1])
                         if a in ("-S", "-l") and args[i + 1].startswith("/var/")]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.glusterd.wait(timeout=20)
        for pid in victims[1:]:
            for _ in range(100):
                try:
                    with open(f"/proc/{pid}/status") as f:
                        if "State:\tZ" in f.read():
                            break
                except OSError:
                    break
                time.sleep(0.05)
        for path in junk:
            try:
                os.unlink(path)
            except OSError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)


class PartitionedGlusterVolume(GlusterVolume):
    """
    A GlusterVolume whose server and two clients sit in network namespaces
    of their own (C{ck-srv} with 10.77.0.1 on a bridge, C{ck-h1} and
    C{ck-h2}), so that one client can be cut off as a host would be, with
    the options that make a cut-off host lose its locks within seconds and
    fail its writes afterwards (C{client.strict-locks}).  The mounts are
    made with C{nsenter --net} only: they stay visible to every process,
    while their FUSE clients' traffic leaves from their namespace.
    """

    server = "10.77.0.1"
    options = (("network.ping-timeout", "5"), ("server.tcp-user-timeout", "5"),
               ("server.keepalive-time", "2"), ("server.keepalive-interval", "1"),
               ("server.keepalive-count", "3"), ("client.strict-locks", "on"))
    namespaces = ("ck-h1", "ck-h2", "ck-srv")

    def __init__(self, case: unittest.TestCase) -> None:
        import shutil

        if shutil.which("ip") is None or shutil.which("nsenter") is None:
            raise unittest.SkipTest("ip (iproute2) or nsenter (util-linux) is not installed")
        if shutil.which("glusterd") is None:
            raise unittest.SkipTest("GlusterFS is not installed (.ci/run installs it)")
        self._deleteNamespaces()
        case.addCleanup(self._deleteNamespaces)
        try:
            self._ip("netns", "add", "ck-srv")
        except AssertionError as e:
            raise unittest.SkipTest(f"cannot make network namespaces here: {e}")
        self._ip("-n", "ck-srv", "link", "set", "lo", "up")
        self._ip("-n", "ck-srv", "link", "add", "ckbr0", "type", "bridge")
        self._ip("-n", "ck-srv", "addr", "add", f"{self.server}/24", "dev", "ckbr0")
        self._ip("-n", "ck-srv", "link", "set", "ckbr0", "up")
        for n in (1, 2):
            self._ip("netns", "add", f"ck-h{n}")
            self._ip("-n", f"ck-h{n}", "link", "set", "lo", "up")
            self._ip("link", "add", f"ck-h{n}-e", "netns", f"ck-h{n}", "type", "veth",
                     "peer", "name", f"ck-br-h{n}", "netns", "ck-srv")
            self._ip("-n", "ck-srv", "link", "set", f"ck-br-h{n}", "master", "ckbr0", "up")
            self._ip("-n", f"ck-h{n}", "addr", "add", f"10.77.0.{n + 1}/24", "dev", f"ck-h{n}-e")
            self._ip("-n", f"ck-h{n}", "link", "set", f"ck-h{n}-e", "up")
        super().__init__(case, mounts=2)

    @property
    def host(self) -> str:
        return self.server

    def serverCommand(self) -> List[str]:
        return ["nsenter", "--net=/var/run/netns/ck-srv"]

    def mountCommand(self, n: int) -> List[str]:
        return ["nsenter", f"--net=/var/run/netns/ck-h{n}"]

    def cut(self, n: int) -> None:
        """Host C{n} loses the network."""
        self._ip("-n", f"ck-h{n}", "link", "set", f"ck-h{n}-e", "down")

    def heal(self, n: int) -> None:
        self._ip("-n", f"ck-h{n}", "link", "set", f"ck-h{n}-e", "up")

    def _ip(self, *args: str) -> None:
        result = subprocess.run(["ip", *args], capture_output=True, timeout=30)
        if result.returncode != 0:
            raise AssertionError(f"ip {' '.join(args)}: {result.stderr.decode().strip()}")

    def _deleteNamespaces(self) -> None:
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        # `ip netns add` bind-mounts /run/netns onto itself.
        if os.path.isdir("/run/netns") and not os.listdir("/run/netns"):
            subprocess.run(["umount", "/run/netns"], capture_output=True)


# -- property tests: a synchronous client on the wire, and what a request changed ------

#: every byte sequence a hostile name may carry lands nowhere but in the
#: storage directory: names built by the property tests contain this, so a
#: file made from one is found wherever it went.
MARKER = "chunkdHostileMarker"


class Answer:
    """
    One HTTP response read off a raw socket: status, headers (lower-cased
    names, every value) and body.
    """

    def __init__(self, status: int, headers: List[Tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headerList = headers
        self.body = body

    def header(self, name: str) -> Optional[str]:
        for key, value in self.headerList:
            if key == name.lower():
                return value
        return None

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.headerList!r} {self.body[:300]!r}>"


def wireRequest(method: str, target: "str | bytes", headers: "List[Tuple[str, str | bytes]]",
                body: bytes = b"", contentLength: "Optional[int | str]" = -1, chunked: bool = False) -> bytes:
    """
    The bytes of one request, exactly as given: C{headers} in order (names
    and values may repeat, values may hold any byte but CR and LF),
    C{Content-Length} the body's (C{-1}), another value, or none
    (C{None}); C{chunked} sends the body as one chunk and a last chunk.
    """
    line = target.encode("latin-1") if isinstance(target, str) else target
    out = [method.encode("latin-1") + b" " + line + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"]
    for name, value in headers:
        raw = value.encode("utf-8") if isinstance(value, str) else value
        out.append(name.encode("latin-1") + b": " + raw + b"\r\n")
    if chunked:
        out.append(b"Transfer-Encoding: chunked\r\n\r\n")
        if body:
            out.append(b"%x\r\n%s\r\n" % (len(body), body))
        out.append(b"0\r\n\r\n")
        return b"".join(out)
    if contentLength == -1:
        contentLength = len(body)
    if contentLength is not None:
        out.append(b"Content-Length: " + str(contentLength).encode("latin-1") + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out) + body


def exchange(port: int, payload: bytes, method: str = "GET", shutWrite: bool = False,
             timeout: float = 30) -> Optional[Answer]:
    """
    Send C{payload} on a new connection and read the first response
    (C{None} if the server closed without one).  C{shutWrite} half-closes
    after sending: a body shorter than its C{Content-Length} ends there.
    """
    import http.client

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking it all
        if shutWrite:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        response = http.client.HTTPResponse(s, method=method)
        try:
            response.begin()
            body = response.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, http.client.IncompleteRead):
            return None
        headers = [(k.lower(), v) for k, v in response.getheaders()]
        return Answer(response.status, headers, body)


class StorageWatch:
    """
    What a daemon's requests may and may not have changed:

     - L{state}: every upload's recorded state -- its record, and the
       bytes its record claims (a sequential upload's first C{offset}
       bytes, a chunked upload's stored chunks, a published file);
     - L{outside}: every file the daemon could have made outside its
       storage directory (its own directory, where it runs, and any path
       anywhere named with L{MARKER});
     - L{newLog}: what it logged since the last call.
    """

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.storage = os.path.realpath(daemon.config["storage"]["directory"])
        self.uploads = os.path.join(self.storage, "uploads")
        self._cache: Dict[str, Tuple[Tuple[int, int, int], Any]] = {}
        self._logOffset = 0
        self._outsideAtStart = self.outside()

    def record(self, uploadId: str) -> Optional[Dict[str, Any]]:
        try:
            return self._parsed(os.path.join(self.uploads, uploadId + ".json"))
        except FileNotFoundError:
            return None

    def _parsed(self, path: str) -> Any:
        import json

        st = os.stat(path)
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        with open(path, "rb") as f:
            value = json.loads(f.read())
        self._cache[path] = (key, value)
        return value

    def claimed(self, record: Dict[str, Any]) -> Optional[bytes]:
        """The bytes C{record} says are durably stored, or C{None} (no data)."""
        import base64

        published = record.get("published")
        if published is not None:
            return readFile(published["path"]) if os.path.exists(published["path"]) else None
        path = os.path.join(self.uploads, record["id"] + ".data")
        if not os.path.exists(path):
            return None
        data = readFile(path)
        extra = record.get("extra", {})
        if "chunkMap" in extra:
            bits = base64.b64decode(extra["chunkMap"])
            size, count, total = extra["chunkSize"], extra["totalChunks"], extra["totalSize"]
            pieces = []
            for index in range(count):
                if bits[index // 8] & (1 << (index % 8)):
                    end = total if index == count - 1 else (index + 1) * size
                    pieces.append(b"%d:" % index + data[index * size:end])
            return b"|".join(pieces)
        return data[: record["offset"]]

    def state(self) -> Dict[str, Any]:
        """Every upload's record and claimed bytes, by id."""
        import json

        result: Dict[str, Any] = {}
        if not os.path.isdir(self.uploads):
            return result
        for name in os.listdir(self.uploads):
            if not name.endswith(".json"):
                continue
            try:
                record = self._parsed(os.path.join(self.uploads, name))
            except FileNotFoundError:
                continue
            result[name[:-5]] = (json.dumps(record, sort_keys=True), self.claimed(record))
        return result

    def outside(self) -> List[str]:
        """
        Files in the daemon's directory (where it runs) but outside its
        storage, other than its config and log, and any file named with
        L{MARKER} in the places an absolute or climbing path would reach.
        """
        found = []
        keep = {self.daemon.configPath, self.daemon.logPath}
        for root, dirs, files in os.walk(self.daemon.dir):
            if os.path.realpath(root) == self.storage:
                dirs[:] = []
                continue
            dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(root, d)) != self.storage]
            found += [os.path.join(root, n) for n in files + dirs if os.path.join(root, n) not in keep]
        for place in {"/", "/tmp", "/var/tmp", os.path.dirname(self.daemon.dir), ROOT,
                      os.path.join(self.storage, "uploads"), os.getcwd()}:
            try:
                found += [os.path.join(place, n) for n in os.listdir(place) if MARKER in n]
            except OSError:
                continue
        return sorted(found)

    def newOutside(self) -> List[str]:
        return [p for p in self.outside() if p not in self._outsideAtStart]

    def newLog(self) -> str:
        with open(self.daemon.logPath, "rb") as f:
            f.seek(self._logOffset)
            data = f.read()
        self._logOffset += len(data)
        return data.decode("utf-8", "replace")
