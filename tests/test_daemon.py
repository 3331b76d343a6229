"""
chunkd as a sysadmin runs it: C{python -m twisted chunkd} in a process of
its own, on the embedded default config, and refusing a bad config file
with one line and a non-zero exit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

from twisted.trial import unittest

from tests.helpers import ROOT, freePort, run


class BadConfigTests(unittest.TestCase):
    def check(self, yaml: str, expected: str) -> None:
        cwd = tempfile.mkdtemp()
        with open(os.path.join(cwd, "bad.yaml"), "w") as f:
            f.write(yaml)
        result = run(["chunkd", "--config", "bad.yaml"], cwd)
        self.assertNotEqual(result.returncode, 0)
        err = result.stderr.decode()
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn(expected, err)
        self.assertNotIn("Traceback", err + result.stdout.decode())

    def test_unknownKey(self) -> None:
        self.check("limits:\n  max_sise: 5\n", "limits.max_sise: unknown key")

    def test_wrongType(self) -> None:
        self.check("network:\n  idle_timeout: forever\n", "network.idle_timeout")

    def test_badEndpoint(self) -> None:
        self.check("listen: 'tcp:port=notaport'\n", "listen: not a Twisted server endpoint")

    def test_unwritableDirectory(self) -> None:
        self.check("storage:\n  directory: /dev/null/x\n", "storage.directory")

    def test_missingFile(self) -> None:
        cwd = tempfile.mkdtemp()
        result = run(["chunkd", "--config", "nope.yaml"], cwd)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("cannot read config file", result.stderr.decode())


class DefaultConfigTests(unittest.TestCase):
    def test_startsServesAndStores(self) -> None:
        cwd = tempfile.mkdtemp()
        port = freePort()
        env = dict(os.environ, PYTHONPATH=ROOT)
        process = subprocess.Popen(
            [sys.executable, "-m", "twisted", "--log-format=text", "chunkd",
             "--listen", f"tcp:port={port}:interface=127.0.0.1"],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 20
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                        s.sendall(b"POST /files/ HTTP/1.1\r\nHost: h\r\nTus-Resumable: 1.0.0\r\n"
                                  b"Upload-Length: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        answer = b""
                        while chunk := s.recv(4096):
                            answer += chunk
                    break
                except OSError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.1)
            self.assertTrue(answer.startswith(b"HTTP/1.1 201"), answer)
            stored = os.listdir(os.path.join(cwd, "chunkd-data", "uploads"))
            self.assertEqual(len([n for n in stored if n.endswith(".json")]), 1)
        finally:
            process.terminate()
            process.wait(timeout=10)
            process.stdout.close()
