"""
chunkd.reload: a reload is read, validated, trimmed of what needs a
restart, and handed to every target's C{reconfigure} -- or refused whole.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from typing import List

import yaml
from twisted.trial import unittest

from chunkd import lazytls, reload
from chunkd.app import Chunkd
from chunkd.config import Config, loadConfig
from chunkd.reload import Reloader
from chunkd.store import UploadStore
from tests.helpers import startedDisk


class Target:
    def __init__(self) -> None:
        self.seen: List[Config] = []

    def reconfigure(self, config: Config) -> None:
        self.seen.append(config)


class ReloaderTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = os.path.join(tempfile.mkdtemp(prefix="chunkd-reload-"), "chunkd.yaml")
        self.write({"limits": {"max_size": "1MiB"}})
        self.running = loadConfig(self.path, {})
        self.targets = [Target(), Target()]
        self.reloader = Reloader(self.path, {}, self.running, self.targets)

    def write(self, data: dict) -> None:
        with open(self.path, "w") as f:
            yaml.safe_dump(data, f)

    def test_everyTargetGetsTheNewConfigInOrder(self) -> None:
        self.write({"limits": {"max_size": "2MiB"}})
        self.assertTrue(self.reloader.reload())
        for target in self.targets:
            self.assertEqual([c.limits.max_size for c in target.seen], [2 * 1024 * 1024])
        self.assertIs(self.reloader.running, self.targets[0].seen[0])

    def test_anInvalidFileChangesNothing(self) -> None:
        self.write({"limits": {"max_sise": "2MiB"}})
        self.assertFalse(self.reloader.reload())
        self.assertEqual([t.seen for t in self.targets], [[], []])
        self.assertIs(self.reloader.running, self.running)

    def test_whatNeedsARestartKeepsItsRunningValue(self) -> None:
        self.write({"limits": {"max_size": "3MiB"}, "tus": {"path": "/elsewhere"},
                    "listen": "tcp:port=9999:interface=127.0.0.1"})
        self.assertTrue(self.reloader.reload())
        new = self.targets[0].seen[0]
        self.assertEqual((new.tus.path, new.listen), (self.running.tus.path, self.running.listen))
        self.assertEqual(new.limits.max_size, 3 * 1024 * 1024)

    def test_durabilityNeedsARestart(self) -> None:
        """
        The store syncs (or not) as it started; a reload cannot change
        that under uploads in flight.
        """
        self.write({"limits": {"max_size": "1MiB"}, "storage": {"durable": not self.running.storage.durable}})
        self.assertTrue(self.reloader.reload())
        self.assertEqual(self.targets[0].seen[0].storage.durable, self.running.storage.durable)

    def test_httpWebhooksChangeWhileAnSslListenerWaitsForARestart(self) -> None:
        """
        Without TLS in the process, an https webhook waits for a restart;
        an http one does not, even when an ssl: listener (which needs a
        restart anyway) is added in the same reload.
        """
        self.patch(lazytls, "available", lambda: False)
        reloader = Reloader(self.path, {}, self.running, self.targets)
        # (the ssl: listener's key does not exist: the file is not parsed)
        self.patch(reload, "loadConfig", lambda path, overrides: replace(
            loadConfig(None, {"limits.max_size": "1MiB", "hooks.endpoints": [{"url": "http://127.0.0.1:9/new"}]}),
            listen=("tcp:port=8080:interface=127.0.0.1", "ssl:port=8443:privateKey=/nonexistent.pem")))
        self.assertTrue(reloader.reload())
        new = self.targets[0].seen[0]
        self.assertEqual([e.url for e in new.hooks.endpoints], ["http://127.0.0.1:9/new"])
        self.assertEqual(new.listen, self.running.listen)
        self.patch(reload, "loadConfig", lambda path, overrides: loadConfig(
            None, {"limits.max_size": "1MiB", "hooks.endpoints": [{"url": "https://127.0.0.1:9/tls"}]}))
        self.assertTrue(reloader.reload())
        self.assertEqual([e.url for e in self.targets[0].seen[1].hooks.endpoints], ["http://127.0.0.1:9/new"])

    def test_commandLineOverridesStillWin(self) -> None:
        reloader = Reloader(self.path, {"limits.max_size": 5}, self.running, self.targets)
        self.write({"limits": {"max_size": "2MiB"}})
        reloader.reload()
        self.assertEqual(self.targets[0].seen[0].limits.max_size, 5)


class ChunkdReconfigureTests(unittest.TestCase):
    """
    Chunkd is one target: its upload layer, every protocol and the Site
    take the reloaded config.
    """

    def test_reachesEveryPart(self) -> None:
        storage = tempfile.mkdtemp(prefix="chunkd-reload-")
        config = loadConfig(None, {"storage.directory": storage})
        disk = startedDisk(self)
        chunkd = Chunkd(config, UploadStore(storage, disk), disk)
        new = loadConfig(None, {"storage.directory": storage, "limits.max_size": 10,
                                "cors.allowed_origins": ["https://app.example"],
                                "network.idle_timeout": 7})
        chunkd.reconfigure(new)
        self.assertIs(chunkd.uploads.config, new)
        for protocol in chunkd.protocols:
            self.assertIs(protocol.config, new, protocol.name)
        self.assertEqual(chunkd.site.cors.origins, {"https://app.example"})
        self.assertEqual(chunkd.site.timeOut, 7)
