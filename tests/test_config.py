"""
The YAML configuration: every mistake is one line naming its key.
"""

from __future__ import annotations

import os
import tempfile

from twisted.trial import unittest

from chunkd.config import ConfigError, checkStorageDirectory, loadConfig, parseDuration, parseSize
from tests.helpers import ROOT


class ValueTests(unittest.TestCase):
    def test_sizes(self) -> None:
        self.assertEqual(parseSize(0), 0)
        self.assertEqual(parseSize("10GiB"), 10 * 1024**3)
        self.assertEqual(parseSize("512 MB"), 512 * 1000**2)
        self.assertEqual(parseSize("1.5KiB"), 1536)
        for bad in ("-1", -1, "ten", "10XB", True, None):
            self.assertRaises(ValueError, parseSize, bad)

    def test_durations(self) -> None:
        self.assertEqual(parseDuration(60), 60.0)
        self.assertEqual(parseDuration("90s"), 90.0)
        self.assertEqual(parseDuration("15m"), 900.0)
        self.assertEqual(parseDuration("24h"), 86400.0)
        self.assertEqual(parseDuration("7d"), 7 * 86400.0)
        for bad in ("-5", "soon", "5w", False):
            self.assertRaises(ValueError, parseDuration, bad)


class LoadTests(unittest.TestCase):
    def write(self, text: str) -> str:
        fd, path = tempfile.mkstemp(suffix=".yaml")
        os.write(fd, text.encode())
        os.close(fd)
        self.addCleanup(os.unlink, path)
        return path

    def assertConfigError(self, text: str, key: str, fragment: str) -> None:
        error = self.assertRaises(ConfigError, loadConfig, self.write(text))
        self.assertEqual(error.key, key)
        self.assertIn(fragment, str(error))
        self.assertNotIn("\n", str(error))

    def test_defaults(self) -> None:
        config = loadConfig(None)
        self.assertEqual(config.listen, ("tcp:port=8080:interface=127.0.0.1",))
        self.assertEqual(config.storage.directory, "./chunkd-data")
        self.assertEqual(config.tus.path, "/files")
        self.assertEqual((config.limits.max_size, config.network.idle_timeout), (0, 60.0))

    def test_shippedFileIsValidAndMatchesDefaults(self) -> None:
        self.assertEqual(loadConfig(os.path.join(ROOT, "etc", "chunkd.yaml")), loadConfig(None))

    def test_issueExample(self) -> None:
        config = loadConfig(self.write(
            'listen: "tcp:port=9000:interface=127.0.0.1"\nstorage:\n  directory: /srv/up\n'
            "tus:\n  path: /up/\nlimits:\n  max_size: 10GiB\nnetwork:\n  idle_timeout: 15m\n"))
        self.assertEqual((config.tus.path, config.limits.max_size, config.network.idle_timeout),
                         ("/up", 10 * 1024**3, 900.0))

    def test_overridesWin(self) -> None:
        path = self.write("storage:\n  directory: /a\n")
        config = loadConfig(path, {"storage.directory": "/b", "listen": "tcp:9999"})
        self.assertEqual((config.storage.directory, config.listen), ("/b", ("tcp:9999",)))

    def test_listenList(self) -> None:
        """
        C{listen} takes one endpoint or a list of them, kept in order.
        """
        path = self.write("listen:\n  - tcp:port=9998:interface=127.0.0.1\n  - tcp:port=9999\n")
        config = loadConfig(path)
        self.assertEqual(config.listen, ("tcp:port=9998:interface=127.0.0.1", "tcp:port=9999"))

    def test_mistakes(self) -> None:
        self.assertConfigError("bogus: 1\n", "bogus", "unknown key")
        self.assertConfigError("storage:\n  dirctory: x\n", "storage.dirctory", "unknown key")
        self.assertConfigError("limits:\n  max_size: lots\n", "limits.max_size", "size")
        self.assertConfigError("network:\n  idle_timeout: [1]\n", "network.idle_timeout", "duration")
        self.assertConfigError("listen: 'nonsense:1'\n", "listen", "endpoint")
        self.assertConfigError("listen: 8080\n", "listen", "list of endpoints")
        self.assertConfigError("listen: []\n", "listen", "non-empty list")
        self.assertConfigError("listen: ['tcp:9999', 'tcp:9999']\n", "listen", "twice")
        self.assertConfigError("listen: ['tcp:9999', 'nonsense:1']\n", "listen", "endpoint")
        self.assertConfigError("auth:\n  tokens: [abc]\n", "auth.tokens", "mapping")
        self.assertConfigError("auth:\n  tokens: {abc: ''}\n", "auth.tokens", "non-empty")
        self.assertConfigError("auth:\n  jwt:\n    leeway: soon\n", "auth.jwt.leeway", "duration")
        self.assertConfigError("tus:\n  enabled: yes please\n", "tus.enabled", "true or false")
        self.assertConfigError("tus:\n  path: files\n", "tus.path", "absolute")
        self.assertConfigError("storage: 5\n", "storage", "mapping")
        self.assertConfigError("disk:\n  threads: 0\n", "disk.threads", "at least one")
        self.assertConfigError("cors:\n  allowed_origins: ['not an origin']\n", "cors.allowed_origins", "origin")
        self.assertConfigError("tus:\n  path: /x\nflow:\n  path: /x/\n", "path", "same path")
        self.assertConfigError("key: [unclosed\n", "", "not valid YAML")

    def test_unwritableStorage(self) -> None:
        config = loadConfig(None, {"storage.directory": "/dev/null/uploads"})
        error = self.assertRaises(ConfigError, checkStorageDirectory, config)
        self.assertEqual(error.key, "storage.directory")


class StorageLockTests(unittest.TestCase):
    """
    chunkd refuses to start on a storage directory whose flock locks do not
    keep two writers apart (a shared file system mounted without lock
    support): one line naming the key, as for any other bad setting.
    """

    def setUp(self) -> None:
        self.config = loadConfig(None, {"storage.directory": tempfile.mkdtemp(prefix="chunkd-locks-")})

    def test_workingLocksPass(self) -> None:
        checkStorageDirectory(self.config)
        self.assertEqual(os.listdir(self.config.storage.directory), [])  # the probe is gone

    def test_locksThatDoNotExcludeAreRefused(self) -> None:
        import fcntl

        self.patch(fcntl, "flock", lambda fd, operation: None)
        error = self.assertRaises(ConfigError, checkStorageDirectory, self.config)
        self.assertEqual(error.key, "storage.directory")
        self.assertIn("file locks do not exclude here", str(error))
        self.assertEqual(os.listdir(self.config.storage.directory), [])

    def test_locksThatFailAreRefused(self) -> None:
        import errno
        import fcntl

        def unsupported(fd: int, operation: int) -> None:
            raise OSError(errno.ENOLCK, "No locks available")

        self.patch(fcntl, "flock", unsupported)
        error = self.assertRaises(ConfigError, checkStorageDirectory, self.config)
        self.assertIn("file locks fail here (No locks available)", str(error))


class SlowUnlockTests(unittest.TestCase):
    """
    On GlusterFS a closed descriptor's lock goes a few milliseconds later
    (seen in CI: chunkd refused a working volume); that is not a lock that
    stays held.
    """

    def test_aLockFreedAMomentAfterTheCloseIsFine(self) -> None:
        import fcntl

        config = loadConfig(None, {"storage.directory": tempfile.mkdtemp(prefix="chunkd-locks-")})
        real = fcntl.flock
        attempts = {"after": 0}
        held = set()

        def slowUnlock(fd: int, operation: int) -> None:
            # The first fd's lock is seen by the second fd for 3 more tries
            # after the first was closed.
            if not held:
                held.add(fd)
                return real(fd, operation)
            if fd not in held and attempts["after"] < 4:
                attempts["after"] += 1
                raise BlockingIOError(11, "Resource temporarily unavailable")
            return real(fd, operation)

        self.patch(fcntl, "flock", slowUnlock)
        checkStorageDirectory(config)
        self.assertEqual(attempts["after"], 4)
