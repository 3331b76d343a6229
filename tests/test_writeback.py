"""
chunkd.writeback: each written batch is handed to the disk at once when
storage is durable (real sync_file_range on a real file), and only then;
a failing or missing call changes nothing but the speed.
"""

from __future__ import annotations

import os
from typing import Any, List, Tuple

from twisted.internet import defer
from twisted.trial import unittest

from chunkd import writeback
from tests.helpers import ServerTestCase, TusTestCase, openTempFile, readFile
from tests.test_disk import DiskTestCase


class StartWritebackTests(unittest.TestCase):
    def test_availableOnLinux(self) -> None:
        self.assertTrue(writeback.available())

    def test_aRealRangeOfARealFile(self) -> None:
        path, fd = openTempFile(self, b"x" * (1024 * 1024))
        assert writeback._syncFileRange is not None
        self.assertEqual(writeback._syncFileRange(fd, 0, 1024 * 1024, 2), 0)
        writeback.startWriteback(fd, 0, 1024 * 1024)
        os.fdatasync(fd)
        self.assertEqual(readFile(path), b"x" * (1024 * 1024))

    def test_errorsAreIgnored(self) -> None:
        path, kept = openTempFile(self, b"abc")
        fd = os.dup(kept)
        os.close(fd)
        assert writeback._syncFileRange is not None
        self.assertEqual(writeback._syncFileRange(fd, 0, 3, 2), -1)  # a closed descriptor
        writeback.startWriteback(fd, 0, 3)  # does not raise


class WriterTests(DiskTestCase):
    def recorded(self) -> List[Tuple[int, int, int]]:
        calls: List[Tuple[int, int, int]] = []
        self.disk.startWriteback = lambda fd, offset, length: calls.append((fd, offset, length))
        return calls

    @defer.inlineCallbacks
    def test_everyWrittenBatchIsStartedOnItsWay(self) -> Any:
        calls = self.recorded()
        self.disk.minBatch = 0
        w = self.writer()
        for piece in (b"a" * 10, b"b" * 20, b"c" * 30):
            w.write(piece)
            yield w.flush()
        start = len(self.PREFIX)
        self.assertEqual(calls, [(self.fd, start, 10), (self.fd, start + 10, 20), (self.fd, start + 30, 30)])


class DurableSiteTests(TusTestCase):
    overrides = {"storage.durable": True}

    @defer.inlineCallbacks
    def test_durableStorageStartsWriteback(self) -> Any:
        self.assertIs(self.disk.startWriteback, writeback.startWriteback)
        started: List[Tuple[int, int]] = []
        real = self.disk.startWriteback

        def watched(fd: int, offset: int, length: int) -> None:
            started.append((offset, length))
            real(fd, offset, length)

        self.disk.startWriteback = watched
        data = os.urandom(3 * 1024 * 1024)
        uploadId = yield self.createId(len(data))
        response = yield self.patch(uploadId, 0, data)
        self.assertEqual(response.code, 204)
        self.assertEqual(self.dataOf(uploadId), data)
        # the ranges handed on cover the body exactly, in order
        self.assertEqual(started[0][0], 0)
        self.assertEqual(sum(length for _, length in started), len(data))
        for (offset, length), (nextOffset, _) in zip(started, started[1:]):
            self.assertEqual(offset + length, nextOffset)


class NotDurableSiteTests(ServerTestCase):
    overrides = {"storage.durable": False}

    def test_noWritebackWithoutDurableStorage(self) -> None:
        self.assertIsNone(self.disk.startWriteback)
