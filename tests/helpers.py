"""
Shared test scaffolding: a real chunkd Site on 127.0.0.1 (port 0) over a
temporary storage directory, a treq client with its own connection pool,
and a raw socket client for what treq cannot send (chunked bodies with
trailers, bodies cut off mid-way).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, Optional

from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from chunkd.config import Config, loadConfig
from chunkd.disk import DiskService
from chunkd.store import UploadStore
from chunkd.app import buildSite


class ServerTestCase(unittest.TestCase):
    """
    Starts chunkd on a real listening socket for each test.

    @cvar overrides: dotted config keys for this test class.
    """

    overrides: Dict[str, object] = {}

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.storage = tempfile.mkdtemp(prefix="chunkd-test-")
        yield self.startServer(dict(self.overrides))

    @defer.inlineCallbacks
    def startServer(self, overrides: Dict[str, object]) -> Any:
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


def randomBytes(n: int) -> bytes:
    return os.urandom(n)
