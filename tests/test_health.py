"""
chunkd.health: whether this node can take uploads -- probed with a real
file in real directories, in a real disk pool, no socket.
"""

from __future__ import annotations

import os
import subprocess
import threading
from typing import Any, List, Optional, Tuple

from twisted.internet import defer
from twisted.trial import unittest

from chunkd.health import StorageHealth
from tests.helpers import mountSmallTmpfs, startedDisk


class StorageHealthTests(unittest.TestCase):
    def setUp(self) -> None:
        self.disk = startedDisk(self)
        self.storage = self.mkdir("storage")
        self.completed = os.path.join(self.storage, "complete")

    def mkdir(self, name: str) -> str:
        path = os.path.abspath(self.mktemp() + "-" + name)
        os.makedirs(path)
        return path

    def health(self, directories: Optional[List[Tuple[str, str]]] = None, minFree: int = 0,
               timeout: float = 5.0) -> StorageHealth:
        if directories is None:
            directories = [("storage", self.storage), ("completed area", self.completed)]
        return StorageHealth(directories, minFree, self.disk, timeout=timeout)

    def replaceByFile(self, path: str) -> None:
        if os.path.isdir(path):
            os.rmdir(path)
        with open(path, "wb") as f:
            f.write(b"not a directory")

    def freeBytes(self, path: str) -> int:
        stats = os.statvfs(path)
        return stats.f_bavail * stats.f_frsize

    @defer.inlineCallbacks
    def test_healthyDirectories(self) -> Any:
        os.mkdir(self.completed)
        reason = yield self.health().check()
        self.assertIsNone(reason)

    @defer.inlineCallbacks
    def test_probesLeaveNothingBehind(self) -> Any:
        os.mkdir(self.completed)
        health = self.health()
        for _ in range(3):
            reason = yield health.check()
            self.assertIsNone(reason)
        self.assertEqual(os.listdir(self.storage), ["complete"])
        self.assertEqual(os.listdir(self.completed), [])

    @defer.inlineCallbacks
    def test_storageReplacedByAFile(self) -> Any:
        self.replaceByFile(self.storage)
        reason = yield self.health().check()
        self.assertEqual(reason, "the storage is not writable (Not a directory)")
        self.assertNotIn(self.storage, reason)

    @defer.inlineCallbacks
    def test_missingStorageIsUnhealthy(self) -> Any:
        # The first directory must exist: it is never skipped.
        os.rmdir(self.storage)
        reason = yield self.health().check()
        self.assertEqual(reason, "the storage is not writable (No such file or directory)")

    @defer.inlineCallbacks
    def test_completedAreaSkippedUntilItExists(self) -> Any:
        health = self.health()
        reason = yield health.check()
        self.assertIsNone(reason)
        self.assertFalse(os.path.lexists(self.completed))  # the check made nothing
        os.mkdir(self.completed)
        reason = yield health.check()
        self.assertIsNone(reason)
        self.replaceByFile(self.completed)
        reason = yield health.check()
        self.assertEqual(reason, "the completed area is not writable (Not a directory)")
        self.assertNotIn(self.completed, reason)

    @defer.inlineCallbacks
    def test_danglingSymlinkIsNotSkipped(self) -> Any:
        # The completed area "exists" as a link to nowhere: a broken
        # configuration, not one made on first use.
        os.symlink(os.path.join(self.storage, "nowhere"), self.completed)
        reason = yield self.health().check()
        self.assertEqual(reason, "the completed area is not writable (No such file or directory)")

    @defer.inlineCallbacks
    def test_firstFailingDirectoryIsReported(self) -> Any:
        other = self.mkdir("other")
        self.replaceByFile(other)
        self.replaceByFile(self.storage)
        reason = yield self.health([("storage", self.storage), ("spool", other)]).check()
        self.assertEqual(reason, "the storage is not writable (Not a directory)")

    @defer.inlineCallbacks
    def test_readOnlyMount(self) -> Any:
        # Root writes through permission bits; a read-only mount stops it.
        mountpoint = mountSmallTmpfs(self, "1m")
        result = subprocess.run(["mount", "-o", "remount,ro", mountpoint], capture_output=True)
        if result.returncode != 0:
            raise unittest.SkipTest(f"cannot remount read-only: {result.stderr.decode().strip()}")
        reason = yield self.health([("storage", self.storage), ("completed area", mountpoint)]).check()
        self.assertEqual(reason, "the completed area is not writable (Read-only file system)")
        self.assertNotIn(mountpoint, reason)

    @defer.inlineCallbacks
    def test_modeBitsDoNotFoolTheProbe(self) -> Any:
        # A mode that forbids writing means nothing to root: the probe
        # really writes, so the answer is what the file system does.
        os.chmod(self.storage, 0o500)
        self.addCleanup(os.chmod, self.storage, 0o700)
        reason = yield self.health().check()
        expected = None if os.geteuid() == 0 else "the storage is not writable (Permission denied)"
        self.assertEqual(reason, expected)

    @defer.inlineCallbacks
    def test_minFreeMet(self) -> Any:
        reason = yield self.health(minFree=1).check()
        self.assertIsNone(reason)

    @defer.inlineCallbacks
    def test_minFreeAboveTheFreeSpace(self) -> Any:
        floor = self.freeBytes(self.storage) + 1024 ** 4
        reason = yield self.health(minFree=floor).check()
        assert reason is not None
        self.assertTrue(reason.startswith("the storage has "), reason)
        self.assertTrue(reason.endswith(f" bytes free, below the floor of {floor}"), reason)
        free = int(reason[len("the storage has "):].split(" ")[0])
        self.assertLess(free, floor)
        self.assertNotIn(self.storage, reason)

    @defer.inlineCallbacks
    def test_minFreeOfTheCompletedArea(self) -> Any:
        # Each directory is held to the floor on its own file system.
        mountpoint = mountSmallTmpfs(self, "1m")
        floor = 2 * 1024 * 1024
        if self.freeBytes(self.storage) < floor:
            raise unittest.SkipTest("the temporary directory has less than 2 MiB free")
        reason = yield self.health([("storage", self.storage), ("completed area", mountpoint)],
                                   minFree=floor).check()
        assert reason is not None
        self.assertTrue(reason.startswith("the completed area has "), reason)
        self.assertTrue(reason.endswith(f"below the floor of {floor}"), reason)

    @defer.inlineCallbacks
    def test_unwritableBeforeFreeSpace(self) -> Any:
        # A directory that takes no file is reported as such, whatever the floor.
        self.replaceByFile(self.storage)
        reason = yield self.health(minFree=10 ** 18).check()
        self.assertEqual(reason, "the storage is not writable (Not a directory)")

    @defer.inlineCallbacks
    def test_diskThatNeverAnswers(self) -> Any:
        release = threading.Event()
        started = threading.Event()
        self.addCleanup(release.set)  # before the disk service stops (cleanups run last first)
        health = self.health(timeout=0.2)

        def hung() -> Optional[str]:
            started.set()
            release.wait()
            return None

        self.patch(health, "_checkNow", hung)
        reason = yield health.check()
        self.assertEqual(reason, "the storage did not answer within 0.2 s")
        self.assertTrue(started.is_set())

    @defer.inlineCallbacks
    def test_checkThatRaises(self) -> Any:
        health = self.health()

        def broken() -> Optional[str]:
            raise RuntimeError("statvfs exploded")

        self.patch(health, "_checkNow", broken)
        reason = yield health.check()
        self.assertEqual(reason, "the health check failed: statvfs exploded")

    @defer.inlineCallbacks
    def test_checkRunsInTheDiskPool(self) -> Any:
        threads: List[threading.Thread] = []
        health = self.health()
        original = health._checkNow

        def recording() -> Optional[str]:
            threads.append(threading.current_thread())
            return original()

        self.patch(health, "_checkNow", recording)
        reason = yield health.check()
        self.assertIsNone(reason)
        self.assertEqual(len(threads), 1)
        self.assertIsNot(threads[0], threading.main_thread())
        self.assertIn(threads[0], self.disk.pool.threads)

    @defer.inlineCallbacks
    def test_aFullDiskLeavesNoProbeBehind(self) -> Any:
        mountpoint = mountSmallTmpfs(self, "64k")
        fd = os.open(os.path.join(mountpoint, "filler"), os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # full
        finally:
            os.close(fd)
        for _ in range(3):
            reason = yield self.health([("storage", mountpoint)]).check()
            self.assertEqual(reason, "the storage is not writable (No space left on device)")
        self.assertEqual(os.listdir(mountpoint), ["filler"])
