"""
Socket activation for real: chunkd started as C{python -m twisted chunkd
--listen systemd:domain=INET:index=0} in a process of its own, serving on a
listening socket it inherited rather than opened, then stopped with SIGTERM.

Two ways of handing the socket over: Debian's C{systemd-socket-activate},
which does what systemd does for C{chunkd.socket}, and the protocol done by
hand (descriptor 3, C{LISTEN_FDS}, C{LISTEN_PID}), which needs no tool.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

from twisted.trial import unittest

from tests.helpers import ROOT, freePort

CHUNKD = [sys.executable, "-m", "twisted", "--log-format=text", "chunkd",
          "--listen", "systemd:domain=INET:index=0"]

#: How long the first request may wait for chunkd to start, and chunkd to
#: stop after SIGTERM (with nothing in flight it stops at once).
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def request(port: int, method: str, path: str, headers: Dict[str, str],
            body: bytes = b"") -> Tuple[int, Dict[str, str]]:
    """
    One request on a new connection; the status and the (lower-cased)
    headers.  The connection may sit in the listening socket's backlog
    while chunkd starts, hence the generous time-out.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=START_TIMEOUT)
    try:
        connection.request(method, path, body=body or None, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()


def passedDescriptor(listener: socket.socket) -> Tuple[List[str], Dict[str, object]]:
    """
    The argv and Popen arguments that start chunkd with C{listener} as its
    descriptor 3, as systemd passes a socket unit's socket: C{LISTEN_FDS=1},
    C{LISTEN_FDNAMES}, and C{LISTEN_PID} set to chunkd's own PID.

    C{LISTEN_PID} can only be known in the process that execs chunkd, hence
    a C{sh -c 'LISTEN_PID=$$ exec …'} wrapper.  The socket travels as its
    standard input and the wrapper moves it to 3: C{pass_fds} keeps a
    descriptor's number, and dash cannot redirect descriptors above 9.
    """
    env = dict(os.environ, PYTHONPATH=ROOT, LISTEN_FDS="1", LISTEN_FDNAMES="chunkd-http")
    env.pop("LISTEN_PID", None)
    argv = ["sh", "-c", 'LISTEN_PID=$$ exec "$@" 3<&0 0</dev/null', "sh"] + CHUNKD
    return argv, {"stdin": listener.fileno(), "env": env, "cwd": tempfile.mkdtemp()}


def listening() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(50)
    return listener


class InheritedSocketTestCase(unittest.TestCase):
    """
    Starts chunkd with an inherited socket, speaks tus to it, stops it.
    """

    process: Optional["subprocess.Popen[bytes]"] = None

    def startChunkd(self, argv: List[str], **popen: object) -> None:
        self.storage = tempfile.mkdtemp(prefix="chunkd-activation-")
        self.log = tempfile.TemporaryFile()
        self.addCleanup(self.log.close)
        argv = argv + ["--storage", self.storage]
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, **popen)  # type: ignore[call-overload]
        self.addCleanup(self.kill)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def kill(self) -> None:
        """
        Clean-up for a test that failed before stopping chunkd itself.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def speakTus(self, port: int) -> None:
        # Until systemd-socket-activate has bound the port, connecting is
        # refused; from then on connections wait in the backlog.
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                status, headers = request(port, "OPTIONS", "/files/", {})
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline or (self.process and self.process.poll() is not None):
                    raise
                time.sleep(0.05)
        self.assertEqual(status, 200, self.output())
        self.assertEqual(headers.get("tus-version"), "1.0.0")
        status, headers = request(
            port, "POST", "/files/",
            {"Tus-Resumable": "1.0.0", "Upload-Length": "5", "Content-Length": "0"},
        )
        self.assertEqual(status, 201, self.output())
        self.assertIn("/files/", headers.get("location", ""))

    def stopChunkd(self, port: int) -> None:
        """
        SIGTERM, as C{systemctl stop} sends: chunkd exits within
        L{STOP_TIMEOUT} and the listening socket is gone with it.
        """
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail(f"chunkd still running {STOP_TIMEOUT}s after SIGTERM:\n{self.output()}")
        # twist re-raises the signal it stopped for, so the exit reads as
        # "killed by SIGTERM": what systemd counts as a clean stop.
        self.assertIn(code, (0, -signal.SIGTERM), self.output())
        self.assertNotIn("Traceback", self.output())
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


class SystemdSocketActivateTests(InheritedSocketTestCase):
    """
    With C{systemd-socket-activate}, which binds the port, waits for the
    first connection and then execs chunkd with the socket as descriptor 3.
    """

    def setUp(self) -> None:
        self.tool = shutil.which("systemd-socket-activate")
        if self.tool is None:
            raise unittest.SkipTest(
                "systemd-socket-activate is not installed (Debian: the systemd package); "
                "PassedDescriptorTests covers the same protocol without it"
            )

    def test_servesInheritedSocket(self) -> None:
        port = freePort()
        assert self.tool is not None
        # --fdname: Twisted adopts descriptors only when LISTEN_FDNAMES names
        # them all, as systemd always does (it defaults to the socket unit's
        # name); the tool sets it only when asked.  It passes nothing of our
        # environment but what -E names.
        argv = [self.tool, "--listen", f"127.0.0.1:{port}", "--fdname=chunkd-http",
                "--setenv", f"PYTHONPATH={ROOT}"] + CHUNKD
        self.startChunkd(argv, cwd=tempfile.mkdtemp())
        # The first connection is what starts chunkd.
        self.speakTus(port)
        self.stopChunkd(port)


class PassedDescriptorTests(InheritedSocketTestCase):
    """
    The protocol by hand (L{passedDescriptor}): our own listening socket
    becomes chunkd's descriptor 3.
    """

    def test_servesInheritedSocket(self) -> None:
        listener = listening()
        self.addCleanup(listener.close)
        port = listener.getsockname()[1]
        argv, popen = passedDescriptor(listener)
        self.startChunkd(argv, **popen)
        # chunkd holds the only other copy: once it stops, the port must close.
        listener.close()
        self.speakTus(port)
        self.stopChunkd(port)

    def test_noInheritedSocket(self) -> None:
        """
        Without LISTEN_FDS chunkd refuses to start, in one line and with a
        non-zero status, instead of listening somewhere else.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        env["PYTHONPATH"] = ROOT
        result = subprocess.run(CHUNKD + ["--storage", tempfile.mkdtemp()], env=env,
                                cwd=tempfile.mkdtemp(), capture_output=True, timeout=START_TIMEOUT)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(b"listen", result.stderr)
        self.assertNotIn(b"Traceback", result.stderr + result.stdout)


class SharedSocketTests(unittest.TestCase):
    """
    Several instances on one socket, as C{chunkd@.service} runs them: two
    chunkd processes inherit the same listening socket and serve the same
    storage directory.

    Which process accepts a connection is the kernel's choice, so the test
    decides it: a process stopped with SIGSTOP accepts nothing, and the
    other one must answer.
    """

    def setUp(self) -> None:
        self.listener = listening()
        self.addCleanup(self.listener.close)
        self.port = self.listener.getsockname()[1]
        self.storage = tempfile.mkdtemp(prefix="chunkd-shared-socket-")
        self.addCleanup(shutil.rmtree, self.storage, True)
        self.processes: List["subprocess.Popen[bytes]"] = []
        self.logs: List[object] = []
        for _ in range(2):
            argv, popen = passedDescriptor(self.listener)
            log = tempfile.TemporaryFile()
            self.addCleanup(log.close)
            process = subprocess.Popen(argv + ["--storage", self.storage], stdout=log,
                                       stderr=subprocess.STDOUT, **popen)  # type: ignore[call-overload]
            self.addCleanup(self.kill, process)
            self.processes.append(process)
            self.logs.append(log)
        # Only the two instances hold the socket from here on.
        self.listener.close()

    def kill(self, process: "subprocess.Popen[bytes]") -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait()

    def output(self) -> str:
        text = []
        for log in self.logs:
            log.seek(0)  # type: ignore[attr-defined]
            text.append(log.read().decode("utf-8", "replace"))  # type: ignore[attr-defined]
        return "\n---\n".join(text)

    def only(self, serving: int) -> None:
        """
        Leave only instance C{serving} able to accept.
        """
        for n, process in enumerate(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGCONT if n == serving else signal.SIGSTOP)

    def tus(self, method: str, path: str, body: bytes = b"", **headers: str) -> Tuple[int, Dict[str, str]]:
        headers = {name.replace("_", "-"): value for name, value in headers.items()}
        headers["Tus-Resumable"] = "1.0.0"
        return request(self.port, method, path, headers, body)

    def test_eitherInstanceServesAndOneDyingLosesNothing(self) -> None:
        """
        Each instance answers on the shared socket; an upload begun through
        one is finished through the other after the first is killed with
        SIGKILL; the port stays open until the last instance stops.
        """
        data = os.urandom(3 * 1024 * 1024)
        # Instance 0 alone creates the upload and writes its first third.
        self.only(0)
        status, headers = self.tus("POST", "/files/", Upload_Length=str(len(data)))
        self.assertEqual(status, 201, self.output())
        path = "/files/" + headers["location"].rsplit("/", 1)[1]
        status, headers = self.tus("PATCH", path, data[:1 << 20], Upload_Offset="0",
                                   Content_Type="application/offset+octet-stream")
        self.assertEqual((status, headers.get("upload-offset")), (204, str(1 << 20)), self.output())
        # Instance 1 alone: it sees the offset instance 0 recorded and goes on.
        self.only(1)
        status, headers = self.tus("HEAD", path)
        self.assertEqual((status, headers.get("upload-offset")), (200, str(1 << 20)), self.output())
        status, headers = self.tus("PATCH", path, data[1 << 20:2 << 20], Upload_Offset=str(1 << 20),
                                   Content_Type="application/offset+octet-stream")
        self.assertEqual((status, headers.get("upload-offset")), (204, str(2 << 20)), self.output())
        # Instance 0 dies (while stopped, as a crash could take it); instance 1
        # carries on alone on the same socket.
        self.processes[0].kill()
        self.processes[0].wait()
        self.only(1)
        status, headers = self.tus("PATCH", path, data[2 << 20:], Upload_Offset=str(2 << 20),
                                   Content_Type="application/offset+octet-stream")
        self.assertEqual((status, headers.get("upload-offset")), (204, str(len(data))), self.output())
        # The bytes are the client's, whoever wrote them.
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=START_TIMEOUT)
        self.addCleanup(connection.close)
        connection.request("GET", path)
        response = connection.getresponse()
        self.assertEqual((response.status, response.read()), (200, data))
        connection.close()
        # The last instance stopping closes the port.
        self.processes[1].send_signal(signal.SIGTERM)
        self.assertIn(self.processes[1].wait(timeout=STOP_TIMEOUT), (0, -signal.SIGTERM), self.output())
        self.assertNotIn("Traceback", self.output())
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", self.port), timeout=5).close()


class SystemdUnitTests(unittest.TestCase):
    """
    The unit files as systemd reads them, offline (C{systemd-analyze
    security --offline} loads a unit with its drop-ins from a root
    directory; no running systemd is needed).
    """

    def setUp(self) -> None:
        self.tool = shutil.which("systemd-analyze")
        if self.tool is None:
            raise unittest.SkipTest("systemd-analyze is not installed (Debian: the systemd package)")
        self.root = tempfile.mkdtemp(prefix="chunkd-units-")
        self.addCleanup(shutil.rmtree, self.root, True)
        units = os.path.join(self.root, "etc", "systemd", "system")
        os.makedirs(units)
        for name in ("chunkd.service", "chunkd.socket", "chunkd@.service", "chunkd@.service.d"):
            source = os.path.join(ROOT, "systemd", name)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(units, name), symlinks=True)
            else:
                shutil.copy(source, units)
        self.units = units

    def review(self, unit: str) -> Tuple[int, str]:
        assert self.tool is not None
        result = subprocess.run([self.tool, "security", "--offline=true", f"--root={self.root}",
                                 "--no-pager", unit], capture_output=True, text=True, timeout=60)
        return result.returncode, result.stdout + result.stderr

    def test_instancesAreAsHardenedAsTheService(self) -> None:
        """
        An instance of chunkd@.service gets every setting of chunkd.service
        (through the drop-in that links to it): the same hardening review,
        line for line, and no setting systemd does not know.
        """
        code, single = self.review("chunkd.service")
        self.assertEqual(code, 0, single)
        code, instance = self.review("chunkd@2.service")
        self.assertEqual(code, 0, instance)
        self.assertNotIn("Unknown", instance)
        self.assertEqual(single.replace("chunkd.service", "UNIT"), instance.replace("chunkd@2.service", "UNIT"))
        self.assertIn("OK", instance.splitlines()[-1])

    def test_theTemplateAloneIsNotAService(self) -> None:
        """
        The drop-in is what makes an instance: without it the template has
        no ExecStart, so a copy that forgets the drop-in directory fails
        loudly instead of running unhardened.
        """
        os.remove(os.path.join(self.units, "chunkd@.service.d", "chunkd.conf"))
        code, output = self.review("chunkd@2.service")
        self.assertNotEqual(code, 0, output)
