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


def request(port: int, method: str, path: str, headers: Dict[str, str]) -> Tuple[int, Dict[str, str]]:
    """
    One request on a new connection; the status and the (lower-cased)
    headers.  The connection may sit in the listening socket's backlog
    while chunkd starts, hence the generous time-out.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=START_TIMEOUT)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()


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
    The protocol by hand: our own listening socket becomes chunkd's
    descriptor 3, with C{LISTEN_FDS=1}, C{LISTEN_FDNAMES} and C{LISTEN_PID}
    set to chunkd's own PID.

    C{LISTEN_PID} can only be known in the process that execs chunkd, hence
    a C{sh -c 'LISTEN_PID=$$ exec …'} wrapper.  The socket travels as its
    standard input and the wrapper moves it to 3: C{pass_fds} keeps a
    descriptor's number, and dash cannot redirect descriptors above 9.
    """

    def test_servesInheritedSocket(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(50)
        port = listener.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=ROOT, LISTEN_FDS="1", LISTEN_FDNAMES="chunkd-http")
        env.pop("LISTEN_PID", None)
        argv = ["sh", "-c", 'LISTEN_PID=$$ exec "$@" 3<&0 0</dev/null', "sh"] + CHUNKD
        self.startChunkd(argv, stdin=listener.fileno(), env=env, cwd=tempfile.mkdtemp())
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
