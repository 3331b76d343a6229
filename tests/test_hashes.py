"""
chunkd.hashes: the running sha256 -- fed by writers, caught up from the
file, finished with only what it lacks, in the disk pool.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any, List

from twisted.internet import defer
from twisted.trial import unittest

from chunkd import hashes as hashesModule
from chunkd.hashes import RunningHashes
from tests.helpers import startedDisk


class RunningHashesTests(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="chunkd-hashes-")
        self.disk = startedDisk(self)
        self.hashes = RunningHashes(self.disk, limit=2)
        self.path = os.path.join(self.directory, "data")
        self.data = os.urandom(5 * 1024 * 1024 + 3)
        with open(self.path, "wb") as f:
            f.write(self.data)

    def test_resumeOnlyWhereTheEntryEnds(self) -> None:
        self.assertIsNotNone(self.hashes.resume("a", 0))
        self.assertIsNone(self.hashes.resume("a", 10))
        self.hashes.advance("a", hashlib.sha256(self.data[:10]), 10)
        copy = self.hashes.resume("a", 10)
        assert copy is not None
        copy.update(b"never recorded")
        self.assertIsNone(self.hashes.resume("a", 24))  # the entry did not move

    def test_oldestEntriesAreEvicted(self) -> None:
        for name in "abc":
            self.hashes.advance(name, hashlib.sha256(), 0)
        self.assertEqual([n in self.hashes for n in "abc"], [False, True, True])

    @defer.inlineCallbacks
    def test_catchUpThenFinishHashesOnlyTheRest(self) -> Any:
        reads: List[int] = []
        real = hashesModule._hashRange

        def counting(path: str, digest: Any, start: int, end: int) -> None:
            reads.append(end - start)
            real(path, digest, start, end)

        self.patch(hashesModule, "_hashRange", counting)
        self.hashes.catchUp("u", self.path, 4 * 1024 * 1024)
        self.hashes.catchUp("u", self.path, 5 * 1024 * 1024)  # while the first runs
        sha = yield self.hashes.finish("u", self.path, len(self.data))
        self.assertEqual(sha, hashlib.sha256(self.data).hexdigest())
        self.assertEqual(sum(reads), len(self.data))  # every byte read once
        self.assertNotIn("u", self.hashes)

    @defer.inlineCallbacks
    def test_aShortFileIsAnError(self) -> Any:
        yield self.assertFailure(self.hashes.finish("v", self.path, len(self.data) + 1), OSError)
