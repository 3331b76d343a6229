"""
chunkd run as a real process, as a sysadmin operates it: reload on SIGHUP
(valid, restart-only and invalid changes), graceful stop on SIGTERM (with a
client that finishes in time and one that does not), and the metrics.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import time
from typing import Dict, Optional

from twisted.trial import unittest

from tests.helpers import CLEAN_EXIT, Daemon, freePort, patchHead, readResponse, tusCreate


def recordOf(daemon: Daemon, uploadId: str) -> Dict:
    with open(os.path.join(daemon.config["storage"]["directory"], "uploads", uploadId + ".json")) as f:
        return json.load(f)


class OperationsTestCase(unittest.TestCase):
    def start(self, config: Optional[Dict] = None, env: Optional[Dict[str, str]] = None) -> Daemon:
        daemon = Daemon(config or {}, env)
        self.addCleanup(daemon.stop)
        return daemon


class ReloadTests(OperationsTestCase):
    def corsAnswer(self, daemon: Daemon) -> bytes:
        return daemon.request(b"OPTIONS /files/ HTTP/1.1\r\nHost: h\r\nOrigin: https://app.example.com\r\n"
                              b"Content-Length: 0\r\n\r\n")

    def test_validChangeTakesEffectWithoutDroppingAnUpload(self) -> None:
        daemon = self.start()
        self.assertNotIn(b"Access-Control-Allow-Origin", self.corsAnswer(daemon))
        uploadId = tusCreate(daemon, 10)
        inFlight = daemon.connect()
        inFlight.sendall(patchHead(uploadId, 0, 10) + b"hello")
        time.sleep(0.2)
        daemon.writeConfig(dict(daemon.config, cors={"allowed_origins": ["https://app.example.com"]}))
        daemon.process.send_signal(signal.SIGHUP)
        daemon.waitForLog("config reloaded; changed: cors.allowed_origins")
        self.assertIn(b"Access-Control-Allow-Origin: https://app.example.com", self.corsAnswer(daemon))
        inFlight.sendall(b"world")
        self.assertTrue(readResponse(inFlight).startswith(b"HTTP/1.1 204"))
        inFlight.close()
        self.assertEqual(recordOf(daemon, uploadId)["offset"], 10)

    def test_restartOnlySettingIsLoggedAndKept(self) -> None:
        daemon = self.start()
        other = freePort()
        daemon.writeConfig(dict(daemon.config, listen=f"tcp:port={other}:interface=127.0.0.1",
                                limits={"max_size": 1000}))
        daemon.process.send_signal(signal.SIGHUP)
        daemon.waitForLog("config: listen changed; that takes effect after a restart")
        daemon.waitForLog("config reloaded; changed: limits.max_size")
        answer = daemon.request(b"OPTIONS /files/ HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        self.assertIn(b"Tus-Max-Size: 1000", answer)

    def test_invalidFileIsRefusedAndTheOldConfigStays(self) -> None:
        daemon = self.start({"cors": {"allowed_origins": ["https://app.example.com"]}})
        daemon.writeConfig("cors:\n  allowed_origins: [1, 2\n")
        daemon.process.send_signal(signal.SIGHUP)
        daemon.waitForLog("config reload refused, the running config stays")
        self.assertIn(b"Access-Control-Allow-Origin", self.corsAnswer(daemon))
        self.assertIsNone(daemon.process.poll())


class StopTests(OperationsTestCase):
    def test_bodyInFlightFinishesBeforeExit(self) -> None:
        daemon = self.start({"network": {"shutdown_grace": "10s"}})
        uploadId = tusCreate(daemon, 8)
        s = daemon.connect()
        s.sendall(patchHead(uploadId, 0, 8) + b"abcd")
        time.sleep(0.2)
        daemon.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # Not accepting any more...
        self.assertRaises(OSError, socket.create_connection, ("127.0.0.1", daemon.port), 1)
        # ...but the request in flight is still served.
        s.sendall(b"efgh")
        self.assertTrue(readResponse(s).startswith(b"HTTP/1.1 204"))
        s.close()
        self.assertIn(daemon.process.wait(timeout=10), CLEAN_EXIT)
        self.assertEqual(recordOf(daemon, uploadId)["offset"], 8)

    def test_stalledBodyIsCutAfterTheGraceAndItsBytesRecorded(self) -> None:
        daemon = self.start({"network": {"shutdown_grace": "1s"}})
        uploadId = tusCreate(daemon, 1 << 20)
        s = daemon.connect()
        s.sendall(patchHead(uploadId, 0, 1 << 20) + b"x" * 100000)
        time.sleep(0.3)
        started = time.time()
        daemon.process.send_signal(signal.SIGTERM)
        self.assertIn(daemon.process.wait(timeout=15), CLEAN_EXIT)
        self.assertLess(time.time() - started, 5)
        s.close()
        self.assertEqual(recordOf(daemon, uploadId)["offset"], 100000)


class MetricsTests(OperationsTestCase):
    def test_countsUploadsAndBytes(self) -> None:
        daemon = self.start()
        uploadId = tusCreate(daemon, 5)
        answer = daemon.request(patchHead(uploadId, 0, 5) + b"hello")
        self.assertTrue(answer.startswith(b"HTTP/1.1 204"))
        metrics = daemon.request(b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n").decode()
        for line in ('chunkd_uploads_created_total{protocol="tus"} 1.0',
                     'chunkd_uploads_completed_total{protocol="tus"} 1.0',
                     'chunkd_bytes_received_total{protocol="tus"} 5.0',
                     'chunkd_requests_total{protocol="tus",status="204"} 1.0',
                     "chunkd_write_queue_bytes 0.0"):
            self.assertIn(line, metrics)
        self.assertIn("chunkd_disk_free_bytes", metrics)


class SystemdNotifyTests(OperationsTestCase):
    """
    The notify protocol from the real daemon, received on a real datagram
    socket standing in for systemd's.
    """

    def test_readyReloadingStopping(self) -> None:
        directory = tempfile.mkdtemp()
        path = os.path.join(directory, "notify")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(path)
        receiver.settimeout(10)
        self.addCleanup(receiver.close)
        daemon = self.start({}, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})

        def next(prefix: str) -> str:
            while True:
                message = receiver.recv(4096).decode()
                if message.startswith(prefix):
                    return message

        ready = next("READY=1")
        self.assertIn("STATUS=serving TusProtocol", ready)
        socket.create_connection(("127.0.0.1", daemon.port), timeout=1).close()  # listening by then
        next("WATCHDOG=1")
        daemon.process.send_signal(signal.SIGHUP)
        self.assertIn("MONOTONIC_USEC=", next("RELOADING=1"))
        next("READY=1")
        daemon.process.send_signal(signal.SIGTERM)
        next("STOPPING=1")
        self.assertIn(daemon.process.wait(timeout=10), CLEAN_EXIT)
