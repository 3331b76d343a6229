"""
Per-subject limits kept where every chunkd process sees them: the storage
directory.  C{limits.max_active_uploads} caps the unfinished uploads one
subject (a token's user, L{chunkd.auth}) may have at once.

Each subject has a directory, C{<storage>/subjects/<hash of subject>/},
holding one empty marker file per upload it created, and a lock file.  A
creation takes the subject's flock (the same lock kind as the store's,
so it holds across processes and hosts and dies with a killed process),
counts the markers that still stand for an unfinished upload and, below
the limit, adds its own.  A marker is checked against its upload's record
every time it is counted, not trusted: an upload that completed, was
terminated or expired stops counting at once, with no event to deliver
and nothing to go stale, and the stale marker is removed then.  The cost
is reading up to C{limit} records per creation -- only for subjects, and
only when a limit is set.

A marker without a record is a creation in progress (or one that failed
before its record was written); it counts for L{PENDING_GRACE} seconds,
then is removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from typing import Callable

from chunkd.errors import TooManyRequests, UploadNotFound
from chunkd.store import ACTIVE, UploadStore

#: how long a marker without a record still counts (a creation under way)
PENDING_GRACE = 60.0
#: what a refused client is told to wait, in seconds
RETRY_AFTER = 30


class ActiveUploads:
    """
    The unfinished uploads of each subject, counted across processes.

    Every method does file I/O and may wait for a lock: call it in the
    disk pool.
    """

    def __init__(self, store: UploadStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.directory = os.path.join(store.directory, "subjects")

    def _subjectDirectory(self, subject: str) -> str:
        # A hash: a subject is client-chosen text and never becomes a path.
        digest = hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return os.path.join(self.directory, digest)

    def claim(self, subject: str, uploadId: str, limit: int) -> bool:
        """
        Count C{uploadId} as one of C{subject}'s unfinished uploads.

        @return: whether this call made the marker (and so may release it);
            C{False} when the upload is counted already (two processes
            creating one Resumable.js upload at once: the one whose
            creation loses must not release the other's marker).
        @raise TooManyRequests: the subject already has C{limit} of them.
        """
        directory = self._subjectDirectory(subject)
        os.makedirs(directory, exist_ok=True)
        marker = os.path.join(directory, uploadId)
        fd = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.exists(marker):
                return False
            if self._count(directory) >= limit:
                raise TooManyRequests(
                    f"this subject already has {limit} unfinished uploads; finish or delete one first",
                    headers={"Retry-After": str(RETRY_AFTER)},
                )
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return True
        finally:
            os.close(fd)  # releases the flock

    def release(self, subject: str, uploadId: str) -> None:
        """
        Stop counting C{uploadId} (its creation failed).
        """
        try:
            os.unlink(os.path.join(self._subjectDirectory(subject), uploadId))
        except FileNotFoundError:
            pass

    def _count(self, directory: str) -> int:
        """
        The markers in C{directory} that still stand for an unfinished
        upload; the others are removed.
        """
        count = 0
        for name in os.listdir(directory):
            if name.startswith("."):
                continue
            path = os.path.join(directory, name)
            if self._stillActive(name, path):
                count += 1
            else:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        return count

    def _stillActive(self, uploadId: str, marker: str) -> bool:
        try:
            record = self.store.get(uploadId)
        except UploadNotFound:
            try:
                age = self.clock() - os.stat(marker).st_mtime
            except FileNotFoundError:
                return False
            return age < PENDING_GRACE
        if record.state != ACTIVE:
            return False
        return record.expires is None or record.expires > self.clock()
