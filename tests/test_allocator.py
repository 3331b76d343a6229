"""
chunkd.allocator with the real glibc, and the disk service handing memory
back once the last streaming body has ended (and only then).
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet import defer
from twisted.trial import unittest

from chunkd import allocator
from tests.helpers import CountingProducer, deferLater
from tests.test_disk import DiskTestCase


class GlibcTests(unittest.TestCase):
    def test_freedReadBuffersAreHandedBack(self) -> None:
        self.assertTrue(allocator.tune())
        kept = [bytearray(256 * 1024) for _ in range(64)]  # 16 MiB on the heap, kept when freed
        del kept
        self.assertTrue(allocator.giveBack())


class IdleTests(DiskTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.idle: List[str] = []
        self.disk.whenIdle = lambda: self.idle.append("trim")
        self.disk.idleAfter = 0.05

    @defer.inlineCallbacks
    def test_givenBackOnceTheLastBodyEnded(self) -> Any:
        first = self.writer(producer=CountingProducer())
        second = self.writer(offset=len(self.PREFIX) + 100, producer=CountingProducer())
        first.write(b"a")
        second.write(b"b")
        first.detach()
        yield deferLater(0.2)
        self.assertEqual(self.idle, [])  # the second still streams
        second.detach()
        yield deferLater(0.2)
        self.assertEqual(self.idle, ["trim"])
        yield defer.gatherResults([first.flush(), second.flush()])

    @defer.inlineCallbacks
    def test_notWhileANewBodyStreams(self) -> Any:
        first = self.writer(producer=CountingProducer())
        first.detach()
        again = self.writer(offset=len(self.PREFIX) + 100, producer=CountingProducer())  # within idleAfter
        yield deferLater(0.2)
        self.assertEqual(self.idle, [])
        again.detach()
        yield deferLater(0.2)
        self.assertEqual(self.idle, ["trim"])
