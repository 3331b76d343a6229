"""
L{chunkd.quotas.ActiveUploads} on real files: counting a subject's
unfinished uploads across instances (as across processes), markers that
stop counting once their upload is finished, gone or expired, and pending
creations that count only for a while.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from chunkd.errors import TooManyRequests
from chunkd.quotas import PENDING_GRACE, ActiveUploads
from chunkd.store import COMPLETE, UploadStore, newUploadId
from tests.helpers import startedDisk


class ActiveUploadsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.now = 1_000_000.0
        self.disk = startedDisk(self)
        self.store = UploadStore(tempfile.mkdtemp(prefix="chunkd-quota-"), self.disk, durable=False,
                                 clock=lambda: self.now)
        # Two instances on one directory stand for two processes.
        self.one = ActiveUploads(self.store, clock=lambda: self.now)
        self.other = ActiveUploads(self.store, clock=lambda: self.now)

    @defer.inlineCallbacks
    def created(self, subject: str) -> Any:
        uploadId = newUploadId()
        self.one.claim(subject, uploadId, 100)
        record = yield self.store.create("tus", 10, 3600.0, uploadId=uploadId, subject=subject)
        return record

    @defer.inlineCallbacks
    def test_limitPerSubjectAcrossInstances(self) -> Any:
        for _ in range(2):
            yield self.created("alice")
        error = self.assertRaises(TooManyRequests, self.other.claim, "alice", newUploadId(), 2)
        self.assertEqual(error.headers["Retry-After"], "30")
        # Another subject has its own count.
        self.other.claim("bob", newUploadId(), 2)

    @defer.inlineCallbacks
    def test_finishedGoneOrExpiredStopCounting(self) -> Any:
        done, gone, expiring = (yield self.created("a")), (yield self.created("a")), (yield self.created("a"))
        self.assertRaises(TooManyRequests, self.one.claim, "a", newUploadId(), 3)
        done.state = COMPLETE
        self.store.save(done)
        self.one.claim("a", newUploadId(), 3)
        self.store.terminate(gone.id)
        self.one.claim("a", newUploadId(), 3)
        self.now = expiring.expires + 1
        self.one.claim("a", newUploadId(), 3)
        # The stale markers were removed as they were counted.
        directory = self.one._subjectDirectory("a")
        self.assertNotIn(done.id, os.listdir(directory))
        self.assertNotIn(gone.id, os.listdir(directory))

    def test_pendingCreationCountsForAWhile(self) -> None:
        pending = newUploadId()
        self.one.claim("a", pending, 1)
        self.assertRaises(TooManyRequests, self.other.claim, "a", newUploadId(), 1)
        self.now += PENDING_GRACE + 1
        os.utime(os.path.join(self.one._subjectDirectory("a"), pending), (self.now - PENDING_GRACE - 1,) * 2)
        self.other.claim("a", newUploadId(), 1)

    def test_aSecondClaimOfOneUploadIsNotItsOwner(self) -> None:
        """
        Two processes creating one Resumable.js upload at once both claim
        its id: the second claim is told the marker is not its own (so its
        failed creation releases nothing), and the upload counts once.
        """
        uploadId = newUploadId()
        self.assertTrue(self.one.claim("a", uploadId, 2))
        self.assertFalse(self.other.claim("a", uploadId, 2))
        self.one.claim("a", newUploadId(), 2)
        self.assertRaises(TooManyRequests, self.other.claim, "a", newUploadId(), 2)

    def test_releasedClaimStopsCounting(self) -> None:
        uploadId = newUploadId()
        self.one.claim("a", uploadId, 1)
        self.one.release("a", uploadId)
        self.one.release("a", uploadId)  # twice is harmless
        self.other.claim("a", newUploadId(), 1)

    def test_subjectNeverBecomesAPath(self) -> None:
        self.one.claim("../../etc/passwd", newUploadId(), 1)
        [entry] = os.listdir(self.one.directory)
        self.assertRegex(entry, "^[0-9a-f]{32}$")
