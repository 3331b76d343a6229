"""
chunkd.lazytls: a chunkd whose configuration needs no TLS never loads
pyOpenSSL or cryptography (checked in real processes, in their memory
maps); one with an C{ssl:} listener or an https webhook does, and serves
TLS; a reload cannot bring https webhooks into a process started without
TLS, and says so.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import tempfile
from dataclasses import replace
from typing import Any, List

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site

from chunkd import lazytls
from chunkd.config import loadConfig
from tests.helpers import Daemon, deferLater, freePort, makeCertificate, readResponse, tusCreate, waitForPort


def loadsCryptography(daemon: Daemon) -> bool:
    """Whether cryptography's compiled extension is mapped into the process."""
    with open(f"/proc/{daemon.process.pid}/maps") as f:
        return "cryptography" in f.read()


class ReasonsTests(unittest.TestCase):
    def test_plainConfigNeedsNoTLS(self) -> None:
        config = loadConfig(None, {"hooks.endpoints": [{"url": "http://127.0.0.1:9/hook"}]})
        self.assertEqual(lazytls.reasons(config), [])

    def test_tlsListenersAndHttpsWebhooks(self) -> None:
        config = replace(loadConfig(None, {"hooks.endpoints": [{"url": "http://a/"}, {"url": "https://b/"}]}),
                         listen=("tcp:port=0:interface=127.0.0.1", "ssl:port=0:privateKey=k.pem"))
        self.assertEqual(lazytls.reasons(config), ["listen: ssl:", "hooks.endpoints[1].url (https)"])

    def test_anyListenerNotKnownToBePlainKeepsTLS(self) -> None:
        plain = ["tcp:port=0", "tcp6:port=0", "unix:/run/chunkd.sock", "systemd:domain=INET:index=0"]
        tls = ["ssl:port=0", "SSL:port=0", "ss\\l:port=0", "haproxy:ssl:port=0", "tls:/etc/certs", "le:/x:tcp:443"]
        config = loadConfig(None, {})
        self.assertEqual(lazytls.reasons(replace(config, listen=tuple(plain))), [])
        self.assertEqual(lazytls.reasons(replace(config, listen=tuple(tls))),
                         ["listen: ssl:", "listen: ssl:", "listen: ssl:", "listen: haproxy:", "listen: tls:",
                          "listen: le:"])

    def test_aRunnerThatLoadedTheReactorKeepsTLS(self) -> None:
        """
        Trial imported the reactor (and with it TLS) before chunkd: nothing
        is refused, TLS stays available.
        """
        self.assertFalse(lazytls.withoutTLSUnlessNeeded(loadConfig(None, {})))
        self.assertTrue(lazytls.available())


class DaemonTests(unittest.TestCase):
    def start(self, config: dict, alsoListen: "list[str]" = []) -> Daemon:
        daemon = Daemon(config, alsoListen=alsoListen)
        self.addCleanup(daemon.stop)
        return daemon

    @defer.inlineCallbacks
    def test_plainDaemonLoadsNoTLSServesAndDeliversWebhooks(self) -> Any:
        received: List[bytes] = []

        class Receiver(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> bytes:
                received.append(request.content.read())
                return b""

        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Receiver()))
        self.addCleanup(port.stopListening)
        daemon = self.start({"hooks": {"endpoints": [
            {"url": f"http://127.0.0.1:{port.getHost().port}/hook", "events": ["post-create"]}]}})
        self.assertFalse(loadsCryptography(daemon))
        uploadId = tusCreate(daemon, 10)
        for _ in range(100):
            if received:
                break
            yield deferLater(0.05)
        self.assertEqual([json.loads(body)["upload"]["id"] for body in received], [uploadId])
        self.assertFalse(loadsCryptography(daemon))
        self.assertNotIn("Traceback", daemon.logText())

    def test_sslListenerLoadsTLSAndServesIt(self) -> None:
        certs = tempfile.mkdtemp(prefix="chunkd-lazytls-")
        keyPath, certPath, certPem = makeCertificate(certs)
        tlsPort = freePort()
        daemon = self.start({}, alsoListen=[
            f"ssl:port={tlsPort}:interface=127.0.0.1:privateKey={keyPath}:certKey={certPath}"])
        self.assertTrue(waitForPort(tlsPort, daemon.process), daemon.logText())
        self.assertTrue(loadsCryptography(daemon))
        context = ssl.create_default_context(cadata=certPem.decode())
        with socket.create_connection(("127.0.0.1", tlsPort), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"OPTIONS /files/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                answer = readResponse(s)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer[:200])

    def test_httpsWebhookLoadsTLS(self) -> None:
        daemon = self.start({"hooks": {"endpoints": [{"url": "https://127.0.0.1:9/hook"}]}})
        self.assertTrue(loadsCryptography(daemon))

    def test_reloadKeepsHttpsWebhooksOutOfAProcessWithoutTLS(self) -> None:
        daemon = self.start({})
        config = dict(daemon.config, hooks={"endpoints": [{"url": "https://127.0.0.1:9/hook"}]},
                      limits={"max_size": "1MiB"})
        daemon.writeConfig(config)
        daemon.process.send_signal(signal.SIGHUP)
        daemon.waitForLog("config reloaded")
        log = daemon.logText()
        self.assertIn("https webhooks need TLS, which this chunkd started without", log)
        self.assertIn("changed: limits.max_size", log)
        self.assertNotIn("Traceback", log)
        self.assertFalse(loadsCryptography(daemon))
        # what could change did: an upload over the new limit is refused
        answer = daemon.request(b"POST /files/ HTTP/1.1\r\nHost: h\r\nTus-Resumable: 1.0.0\r\n"
                                b"Upload-Length: 2097152\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 413"), answer[:200])
        self.assertTrue(os.path.isdir(daemon.dir))
