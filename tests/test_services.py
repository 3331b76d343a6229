"""
The listening side of L{chunkd.services.WebService} for real: a chunkd
process listening on a list of endpoints -- HTTPS with a certificate made
in the test, and plain HTTP on loopback -- serving the same uploads on
each; a tus upload and a Resumable.js upload over TLS, verified by treq
through service-identity; and a list with an endpoint that cannot listen
refused at start in one line.  And the start-up L{Reconciler}: a bounded
batch of records per disk-pool job, a stop honoured between two.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from typing import Any
from urllib.parse import urlencode

from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.ssl import Certificate
from twisted.trial import unittest
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseFailed

from chunkd.services import Reconciler
from chunkd.store import UploadStore
from tests.helpers import ROOT, Daemon, freePort, h, makeCertificate, startedDisk, waitForPort

TUS = {"Tus-Resumable": "1.0.0"}


class TLSTests(unittest.TestCase):
    """
    HTTPS on one endpoint, HTTP on another, one chunkd process.
    """

    def setUp(self) -> None:
        self.certs = tempfile.mkdtemp(prefix="chunkd-tls-")
        keyPath, certPath, self.certPem = makeCertificate(self.certs)
        self.tlsPort = freePort()
        self.daemon = Daemon({}, alsoListen=[
            f"ssl:port={self.tlsPort}:interface=127.0.0.1:privateKey={keyPath}:certKey={certPath}"])
        self.addCleanup(self.daemon.stop)
        if not waitForPort(self.tlsPort, self.daemon.process):
            self.fail("the TLS port never opened:\n" + self.daemon.logText())
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(self.certPem))
        self.https = HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
        self.tls = f"https://localhost:{self.tlsPort}"
        self.plain = f"http://127.0.0.1:{self.daemon.port}"

    @defer.inlineCallbacks
    def test_tusOverTLS(self) -> Any:
        """
        Created and written over HTTPS (Location says https), read back over
        the plain loopback endpoint: one store behind both.
        """
        data = os.urandom(300_000)
        created = yield self.https.post(f"{self.tls}/files/", headers=dict(TUS, **{"Upload-Length": str(len(data))}))
        yield created.content()
        self.assertEqual(created.code, 201)
        location = h(created, "location")
        self.assertTrue(location.startswith(f"https://localhost:{self.tlsPort}/files/"), location)
        patched = yield self.https.patch(location, data=data, headers=dict(TUS, **{
            "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}))
        yield patched.content()
        self.assertEqual((patched.code, h(patched, "upload-offset")), (204, str(len(data))))
        path = location.split(str(self.tlsPort), 1)[1]
        got = yield self.https.get(self.plain + path, headers=TUS)
        self.assertEqual((got.code, (yield got.content())), (200, data))

    @defer.inlineCallbacks
    def test_resumableOverTLS(self) -> Any:
        data = os.urandom(3 * 65536 + 100)
        size = 65536
        total = len(data) // size
        query = {"resumableChunkSize": size, "resumableTotalSize": len(data), "resumableTotalChunks": total,
                 "resumableIdentifier": f"{len(data)}-tls-bin", "resumableFilename": "tls.bin"}
        for n in range(1, total + 1):
            chunk = data[(n - 1) * size: n * size if n < total else len(data)]
            params = dict(query, resumableChunkNumber=n, resumableCurrentChunkSize=len(chunk))
            response = yield self.https.post(f"{self.tls}/resumable?{urlencode(params)}", data=chunk)
            body = yield response.content()
            self.assertEqual(response.code, 200, body)
        complete = os.path.join(self.daemon.config["storage"]["directory"], "complete")
        # Published under its upload id; the sidecar keeps the client's name.
        [published] = [name for name in os.listdir(complete) if not name.endswith(".json")]
        with open(os.path.join(complete, published + ".json")) as f:
            self.assertEqual(json.load(f)["clientFilename"], "tls.bin")
        with open(os.path.join(complete, published), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), hashlib.sha256(data).hexdigest())

    @defer.inlineCallbacks
    def test_untrustedCertificateIsRefusedByTheClient(self) -> Any:
        """
        The check above is real: a client that does not trust the test's
        certificate refuses the connection (service-identity and the trust
        root decide, not a disabled verification).
        """
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        client = HTTPClient(Agent(reactor, pool=pool))
        with self.assertRaises(ResponseFailed):
            yield client.get(f"{self.tls}/health")


class ListenFailureTests(unittest.TestCase):
    def test_oneEndpointThatCannotListenStopsTheStart(self) -> None:
        """
        A listed endpoint that cannot listen (its port is taken) stops
        chunkd with one line naming why, and nothing keeps listening.
        """
        taken = Daemon({})
        self.addCleanup(taken.stop)
        directory = tempfile.mkdtemp(prefix="chunkd-listen-")
        free = freePort()
        config = os.path.join(directory, "chunkd.yaml")
        with open(config, "w") as f:
            f.write(f"listen: ['tcp:port={free}:interface=127.0.0.1', "
                    f"'tcp:port={taken.port}:interface=127.0.0.1']\n"
                    f"storage: {{directory: {directory}/data}}\n")
        result = subprocess.run([sys.executable, "-m", "twisted", "--log-format=text", "chunkd",
                                 "--config", config], cwd=directory, capture_output=True, timeout=60,
                                env=dict(os.environ, PYTHONPATH=ROOT))
        output = (result.stdout + result.stderr).decode("utf-8", "replace")
        self.assertEqual(result.returncode, 1, output)
        self.assertIn("cannot listen", output)
        self.assertIn("Address already in use", output)
        self.assertNotIn("Traceback", output)


class ReconcilerTests(unittest.TestCase):
    """
    The start-up check against real records: it hands the disk pool one
    bounded batch at a time, so with a million records it neither holds a
    disk thread for minutes nor makes a stop wait for the whole store.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.disk = startedDisk(self)
        self.store = UploadStore(tempfile.mkdtemp(prefix="chunkd-reconciler-"), self.disk)
        self.ids = []
        for _ in range(5):
            record = yield self.store.create("tus", 10, None)
            self.ids.append(record.id)
        os.unlink(self.store.dataPath(self.ids[0]))  # lost in a crash, say
        self.jobs: list = []
        run = self.disk.run

        def counted(f: Any, *args: Any) -> Any:
            self.jobs.append(args)
            return run(f, *args)

        self.patch(self.disk, "run", counted)

    @defer.inlineCallbacks
    def test_everyRecordABatchAtATime(self) -> Any:
        reconciler = Reconciler(self.store, batch=2)
        reconciler.startService()
        yield reconciler.done
        self.assertEqual(self.jobs, [(2,), (2,), (2,)])  # 2 + 2 + 1, then the end found
        self.assertEqual(reconciler.counts, {"records": 5, "missing": 1, "truncated": 0, "busy": 0})
        self.assertEqual(self.store.get(self.ids[0]).state, "expired")
        assert self.store.startupCheck is not None
        self.assertTrue(self.store.startupCheck.fired)  # the janitor's first sweep may go

    @defer.inlineCallbacks
    def test_aStopEndsThePassBetweenBatches(self) -> Any:
        reconciler = Reconciler(self.store, batch=1)
        reconciler.startService()
        yield reconciler.stopService()
        self.assertEqual(len(self.jobs), 1)
        self.assertEqual(reconciler.counts["records"], 1)
