"""
Scaffolding for the interop suite: chunkd as a real process, Node scripts
and headless Chromium as real clients, with bounded waits everywhere.

chunkd runs as C{python -m twisted chunkd} on a loopback port it picks
itself (port 0; the port is read from its log), over a temporary storage
directory that is removed afterwards.  Every child process runs in its own
process group and is ended with SIGTERM, then SIGKILL, so a stuck Chromium
under a Node driver cannot outlive its test.

Tools the suite needs (Node, the npm packages of C{tests/interop}, Debian's
Chromium) are installed by C{.ci/run}.  Without them a test is skipped with
the reason, except under CI (C{CI} set), where a missing tool is a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import yaml
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import File

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
JS = os.path.join(HERE, "js")
NODE_MODULES = os.path.join(HERE, "node_modules")
CHROMIUM = os.environ.get("CHUNKD_CHROMIUM", "/usr/bin/chromium")

#: How long chunkd may take to start listening.
START_TIMEOUT = 20.0
#: How long chunkd may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0


def sha256File(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def missingTool(reason: str) -> None:
    """
    Skip the test for a tool that is not installed, or fail under CI, where
    C{.ci/run} installed everything and a missing tool is a broken setup.
    """
    if os.environ.get("CI"):
        raise AssertionError(f"interop: {reason} (under CI .ci/run must have installed it)")
    raise unittest.SkipTest(f"interop: {reason}; .ci/run installs it")


def requireNode(packages: Sequence[str] = ()) -> str:
    node = shutil.which("node")
    if node is None:
        missingTool("node is not installed")
    for package in packages:
        if not os.path.isdir(os.path.join(NODE_MODULES, package)):
            missingTool(f"npm package {package} is not installed (cd tests/interop && npm ci)")
    return node  # type: ignore[return-value]


def requireChromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        missingTool(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


def packageVersion(package: str) -> str:
    with open(os.path.join(NODE_MODULES, package, "package.json"), encoding="utf-8") as f:
        return str(json.load(f)["version"])


def killGroup(proc: "subprocess.Popen[Any]", timeout: float = STOP_TIMEOUT) -> None:
    """
    SIGTERM to the process group of C{proc}, then SIGKILL if it lingers.
    """
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    # Anything left in the group (a browser under a driver) goes too.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:  # pragma: no cover - unkillable
        pass


class ChunkdProcess:
    """
    One chunkd daemon: C{python -m twisted chunkd} as a child process.
    """

    def __init__(self, config: Optional[Dict[str, Any]] = None) -> None:
        self.tmp = tempfile.mkdtemp(prefix="chunkd-interop-")
        self.storage = os.path.join(self.tmp, "storage")
        self.logPath = os.path.join(self.tmp, "chunkd.log")
        self.config = config or {}
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def start(self) -> None:
        argv = [sys.executable, "-m", "twisted", "--log-format=text", "chunkd",
                "--listen", "tcp:port=0:interface=127.0.0.1", "--storage", self.storage]
        config = {"storage": {"durable": False}}
        for key, value in self.config.items():
            if isinstance(value, dict):
                config.setdefault(key, {}).update(value)
            else:
                config[key] = value
        path = os.path.join(self.tmp, "chunkd.yaml")
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f)
        argv += ["--config", path]
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        log = open(self.logPath, "wb")
        try:
            self.proc = subprocess.Popen(argv, cwd=self.tmp, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = re.search(r"starting on (\d+)", self.log())
            if match:
                self.port = int(match.group(1))
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"chunkd did not start:\n{self.log()}")

    def log(self) -> str:
        try:
            with open(self.logPath, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            killGroup(self.proc)
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- what chunkd stored --------------------------------------------------

    def uploadData(self, uploadId: str) -> str:
        """
        The data file of an upload (tus and the facade keep it there).
        """
        assert re.match(r"^[0-9a-f]{32}$", uploadId), uploadId
        return os.path.join(self.storage, "uploads", uploadId + ".data")

    def uploadRecord(self, uploadId: str) -> Dict[str, Any]:
        path = os.path.join(self.storage, "uploads", uploadId + ".json")
        with open(path, encoding="utf-8") as f:
            return json.load(f)  # type: ignore[no-any-return]

    def completeDir(self) -> str:
        return os.path.join(self.storage, "complete")

    def completedFiles(self) -> List[Dict[str, Any]]:
        """
        The sidecars of the completed-files area (Resumable.js, flow.js and
        the facade publish finished uploads there), each with C{path}.
        """
        found = []
        directory = self.completeDir()
        if not os.path.isdir(directory):
            return found
        for name in sorted(os.listdir(directory)):
            if name.endswith(".json") and not name.endswith(".json.tmp"):
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    info = json.load(f)
                info.setdefault("path", os.path.join(directory, name[: -len(".json")]))
                found.append(info)
        return found


class InteropTestCase(unittest.TestCase):
    """
    A trial test case with one chunkd process per test.

    @cvar chunkdConfig: YAML config (nested dicts) for the daemon.
    @cvar startChunkd: start the daemon in setUp (a test that needs to know
        something first, e.g. a page origin for CORS, starts it itself).
    """

    chunkdConfig: Dict[str, Any] = {}
    startChunkd = True
    timeout = 180

    def setUp(self) -> Any:
        if self.startChunkd:
            self.chunkd = self.runChunkd(self.chunkdConfig)

    def runChunkd(self, config: Dict[str, Any]) -> ChunkdProcess:
        chunkd = ChunkdProcess(config)
        self.addCleanup(chunkd.cleanup)
        chunkd.start()
        return chunkd

    def tempDir(self) -> str:
        path = tempfile.mkdtemp(prefix="chunkd-interop-client-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def sourceFile(self, size: int, name: str = "source.bin") -> "tuple[str, bytes]":
        data = os.urandom(size)
        path = os.path.join(self.tempDir(), name)
        with open(path, "wb") as f:
            f.write(data)
        return path, data

    def runNode(self, script: str, args: Dict[str, Any], timeout: float = 90) -> "Any":
        """
        Run C{js/<script>} with one JSON argument in a thread (the reactor
        keeps serving meanwhile); fire with the JSON report it printed.
        """
        node = requireNode()
        argv = [node, os.path.join(JS, script), json.dumps(dict(args, timeout=timeout - 5))]
        return threads.deferToThread(runBounded, argv, timeout, HERE)


def runBounded(argv: List[str], timeout: float, cwd: str) -> Dict[str, Any]:
    """
    Run a child in its own process group, kill the group if it outlives
    C{timeout}, and parse the last stdout line as JSON.
    """
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        killGroup(proc, 2)
        out, err = proc.communicate()
        raise AssertionError(f"{argv[1]} timed out after {timeout}s\nstdout: {out[-4000:]!r}\nstderr: {err[-4000:]!r}")
    finally:
        killGroup(proc, 2)
    lines = [line for line in out.decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        raise AssertionError(f"{argv[1]} printed nothing (exit {proc.returncode})\nstderr: {err[-4000:]!r}")
    try:
        report = json.loads(lines[-1])
    except ValueError:
        raise AssertionError(f"{argv[1]} printed no JSON report (exit {proc.returncode})\n"
                             f"stdout: {out[-4000:]!r}\nstderr: {err[-4000:]!r}")
    report["_stderr"] = err.decode("utf-8", "replace")[-4000:]
    report["_exit"] = proc.returncode
    return report  # type: ignore[no-any-return]


class _TrackingSite(Site):
    """
    A Site that remembers its open connections, so a test can close them
    all (the browser's keep-alive connections) and leave a clean reactor.
    """

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.open: Dict[Any, defer.Deferred[None]] = {}

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        done: defer.Deferred[None] = defer.Deferred()
        self.open[protocol] = done
        lost = protocol.connectionLost

        def connectionLost(reason: Any) -> None:
            lost(reason)
            self.open.pop(protocol, None)
            done.callback(None)

        protocol.connectionLost = connectionLost
        return protocol

    def closeAll(self) -> "defer.Deferred[Any]":
        waits = list(self.open.values())
        for protocol in list(self.open):
            protocol.transport.abortConnection()
        return defer.gatherResults(waits)


class BrowserTestCase(InteropTestCase):
    """
    A page served from C{web/} (plus the client libraries under C{/lib/}) by
    a small twisted.web server on another loopback port than chunkd's, so
    the page is a real cross-origin client; chunkd is started with that
    origin in C{cors.allowed_origins}.

    @cvar libraries: C{/lib/<name>} -> a file under C{node_modules}.
    @cvar bundles: C{/lib/<name>} -> an ES module entry under C{web/}
        bundled with esbuild when the test starts.
    """

    startChunkd = False
    libraries: Dict[str, str] = {}
    bundles: Dict[str, str] = {}
    packages: Sequence[str] = ("playwright-core",)

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        requireNode(list(self.packages) + ["playwright-core"])
        requireChromium()
        self.tmp = self.tempDir()
        root = File(os.path.join(HERE, "web"))
        lib = Resource()
        root.putChild(b"lib", lib)
        for name, path in self.libraries.items():
            lib.putChild(name.encode(), File(os.path.join(NODE_MODULES, path)))
        for name, entry in self.bundles.items():
            out = os.path.join(self.tmp, name)
            yield threads.deferToThread(runBounded, [requireNode(), os.path.join(JS, "bundle.mjs"),
                                                     os.path.join(HERE, "web", entry), out], 60, HERE)
            lib.putChild(name.encode(), File(out))
        self.site = _TrackingSite(root)
        self.site.displayTracebacks = False
        self.web = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.site.closeAll)
        self.addCleanup(self.web.stopListening)
        self.origin = f"http://127.0.0.1:{self.web.getHost().port}"
        config = dict(self.chunkdConfig)
        config["cors"] = dict(config.get("cors", {}), allowed_origins=[self.origin])
        self.chunkd = self.runChunkd(config)

    def runPage(self, page: str, spec: Dict[str, Any], directory: Optional[str] = None,
                timeout: float = 120) -> "defer.Deferred[Dict[str, Any]]":
        """
        Open C{web/<page>} in a fresh headless Chromium and run
        C{window.runScenario(spec)}; fire with its result (the driver's
        console and error capture under C{_browser}).
        """
        profile = os.path.join(self.tempDir(), "profile")
        args = {"page": f"{self.origin}/{page}", "spec": spec, "chromium": requireChromium(),
                "profile": profile, "directory": directory, "timeout": timeout - 10}
        argv = [requireNode(), os.path.join(JS, "browser.mjs"), json.dumps(args)]
        d = threads.deferToThread(runBounded, argv, timeout, HERE)

        def check(out: Dict[str, Any]) -> Dict[str, Any]:
            if out.get("error") or out.get("result") is None:
                raise AssertionError(f"the browser run failed: {out.get('error')}\n"
                                     f"page errors: {out.get('pageErrors')}\nconsole: {out.get('console')}\n"
                                     f"driver stderr: {out.get('_stderr')}\nchunkd log:\n{self.chunkd.log()[-3000:]}")
            result: Dict[str, Any] = out["result"]
            result["_browser"] = {k: out.get(k) for k in ("console", "pageErrors", "failed")}
            return result

        return d.addCallback(check)
