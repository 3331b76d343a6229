"""
The running sha256 of uploads, so that publishing a finished upload rarely
has to read its file again.

A published upload's sidecar carries its sha256, and the answer that
reports it (the facade's finalize, the last chunk of a Resumable.js file)
should come at once even for gigabytes.  So the hash is kept as the bytes
arrive, in one of two ways:

  - fed in the disk thread by the writer of a sequential upload (a copy of
    the entry, which replaces it only once its bytes are recorded, so a
    refused or failed write leaves it as it was);
  - caught up from the file, in the disk pool, over the run of chunks stored
    at the front of a chunked upload, while later chunks still arrive.

An entry is a hash object and the number of leading bytes it covers.  It
lives in this process's memory only: after a restart, in another process,
or once evicted, publishing hashes from wherever the entry stands (from the
start when there is none) -- correct always, slower only then.  L{recomputed}
counts those cases.
"""

from __future__ import annotations

import errno
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from chunkd.disk import DiskService


@dataclass
class RunningHash:
    """
    The sha256 of an upload's first C{covered} bytes.

    @ivar running: the catch-up job in the disk pool, if any: one at a time.
    @ivar again: more became contiguous while it ran.
    """

    digest: Any = field(default_factory=hashlib.sha256)
    covered: int = 0
    running: Optional["Deferred[Any]"] = None
    again: Optional[int] = None


class RunningHashes:
    """
    The running hashes of this process's uploads.  Entries of abandoned
    uploads are evicted oldest first past C{limit}.
    """

    log = Logger()

    def __init__(self, disk: DiskService, limit: int = 10000) -> None:
        self.disk = disk
        self.limit = limit
        self._entries: "OrderedDict[str, RunningHash]" = OrderedDict()
        #: publications that had to read bytes no running hash had seen
        self.recomputed = 0

    def __contains__(self, uploadId: str) -> bool:
        return uploadId in self._entries

    def _touch(self, uploadId: str, entry: RunningHash) -> None:
        self._entries[uploadId] = entry
        self._entries.move_to_end(uploadId)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    # -- fed by a sequential writer ------------------------------------------

    def resume(self, uploadId: str, offset: int) -> Optional[Any]:
        """
        A hash to feed the bytes written from C{offset}: a copy of the
        entry if it covers exactly the bytes before C{offset}, a fresh one
        at offset 0, else C{None} (those bytes were never hashed here).
        """
        entry = self._entries.get(uploadId)
        if entry is not None and entry.covered == offset and entry.running is None:
            self._entries.move_to_end(uploadId)
            return entry.digest.copy()
        if offset == 0:
            return hashlib.sha256()
        return None

    def advance(self, uploadId: str, digest: Any, covered: int) -> None:
        """
        C{digest} covers the first C{covered} bytes, now recorded.
        """
        self._touch(uploadId, RunningHash(digest, covered))

    # -- caught up from the file ------------------------------------------------

    def covered(self, uploadId: str) -> int:
        """How many leading bytes the entry has taken in (0 without one)."""
        entry = self._entries.get(uploadId)
        return entry.covered if entry is not None else 0

    def catchUp(self, uploadId: str, path: str, end: int) -> None:
        """
        Hash C{path} up to C{end} (the end of the bytes known to be stored
        from the start), in the disk pool, one job per upload at a time.
        """
        entry = self._entries.get(uploadId)
        if entry is None:
            entry = RunningHash()
            self._touch(uploadId, entry)
        if entry.running is not None:
            entry.again = max(entry.again or 0, end)
            return
        if end <= entry.covered:
            return
        entry.running = self.disk.run(_hashRange, path, entry.digest, entry.covered, end)
        entry.running.addBoth(self._caughtUp, uploadId, entry, path, end)

    def _caughtUp(self, result: Any, uploadId: str, entry: RunningHash, path: str, end: int) -> None:
        entry.running = None
        if isinstance(result, Failure):
            # Half-hashed is useless: publishing hashes the whole file.
            if self._entries.get(uploadId) is entry:
                del self._entries[uploadId]
            return
        entry.covered = end
        again, entry.again = entry.again, None
        if again is not None and self._entries.get(uploadId) is entry:
            self.catchUp(uploadId, path, again)

    # -- publishing ---------------------------------------------------------------

    def finish(self, uploadId: str, path: str, size: int) -> "Deferred[str]":
        """
        The sha256 of the first C{size} bytes of C{path}: at once when the
        entry covers them, else hashing what it lacks in the disk pool
        (never on the reactor thread).  The entry is used up.
        """
        entry = self._entries.pop(uploadId, None)
        if entry is not None and entry.running is not None:
            # Let the catch-up under way finish, then continue from it.
            running = entry.running
            d: Deferred[str] = Deferred()

            def resumed(_: Any) -> None:
                self._entries.pop(uploadId, None)
                self._finishFrom(entry if entry.running is None and entry.covered <= size else None,
                                 uploadId, path, size).chainDeferred(d)

            running.addBoth(resumed)
            return d
        return self._finishFrom(entry if entry is not None and entry.covered <= size else None,
                                uploadId, path, size)

    def _finishFrom(self, entry: Optional[RunningHash], uploadId: str, path: str, size: int) -> "Deferred[str]":
        if entry is not None and entry.covered == size:
            return succeed(str(entry.digest.hexdigest()))
        if entry is None or entry.covered == 0:
            self.recomputed += 1
            self.log.info("hashing upload {uploadId} ({size} bytes) from its file",
                          uploadId=uploadId, size=size)
            return self.disk.run(sha256OfFile, path, size)
        return self.disk.run(_continued, path, entry.digest, entry.covered, size)

    def forget(self, uploadId: str) -> None:
        self._entries.pop(uploadId, None)


def sha256OfFile(path: str, length: int) -> str:
    """
    The sha256 of the first C{length} bytes of C{path}.  Blocking: runs in
    the disk pool.

    @raise OSError: the file is shorter than C{length}.
    """
    digest = hashlib.sha256()
    _hashRange(path, digest, 0, length)
    return str(digest.hexdigest())


def _continued(path: str, digest: Any, start: int, size: int) -> str:
    """The sha256 of C{size} bytes whose first C{start} C{digest} has seen."""
    _hashRange(path, digest, start, size)
    return str(digest.hexdigest())


def _hashRange(path: str, digest: Any, start: int, end: int) -> None:
    """
    Feed C{digest} bytes C{start} to C{end} of C{path} in 1 MiB blocks read
    into one reused buffer (hashlib drops the GIL for blocks this size, so
    the reactor runs on meanwhile).  Blocking.

    @raise OSError: the file ends before C{end}.
    """
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        remaining = end - start
        while remaining > 0:
            n = f.readinto(view[: min(remaining, len(buffer))])
            if not n:
                raise OSError(errno.EIO, "the file is shorter than its recorded length")
            digest.update(view[:n])
            remaining -= n
