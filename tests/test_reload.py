"""
chunkd.reload: a reload is read, validated, trimmed of what needs a
restart, and handed to every target's C{reconfigure} -- or refused whole.
"""

from __future__ import annotations

import os
import tempfile
from typing import List

import yaml
from twisted.trial import unittest

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
