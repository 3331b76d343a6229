"""
The health check load balancers probe (C{GET /health}): whether this node
can take uploads now.
"""

from __future__ import annotations

import os
import secrets
from typing import List, Optional, Tuple

from twisted.internet.defer import Deferred, TimeoutError
from twisted.python.failure import Failure

from chunkd.disk import DiskService


class StorageHealth:
    """
    Whether this node can take uploads: every directory it writes to
    accepts a new file, and the file system keeps at least C{minFree}
    bytes free.  A probe file is really created, because permission bits
    say nothing when chunkd runs as root, nor on a read-only mount.

    @param directories: C{(label, path)} pairs; the label, not the path,
        goes into the reason a client sees.  A directory made on first use
        (the completed area) is checked once it exists; the first, the
        storage, must exist.
    """

    def __init__(self, directories: List[Tuple[str, str]], minFree: int, disk: DiskService,
                 timeout: float = 5.0) -> None:
        self.directories = directories
        self.minFree = minFree
        self.disk = disk
        self.timeout = timeout

    def check(self) -> Deferred[Optional[str]]:
        """
        @return: a Deferred firing with C{None} when healthy, else with the
            reason; a disk that does not answer within C{timeout} is unhealthy.
        """
        d = self.disk.run(self._checkNow)
        d.addTimeout(self.timeout, self.disk.reactor)

        def trouble(failure: Failure) -> str:
            if failure.check(TimeoutError):
                return f"the storage did not answer within {self.timeout:g} s"
            return f"the health check failed: {failure.getErrorMessage()}"

        return d.addErrback(trouble)

    def _checkNow(self) -> Optional[str]:
        # Runs in the disk pool: a hung file system must not hang the reactor.
        for index, (label, directory) in enumerate(self.directories):
            if index and not os.path.lexists(directory):
                continue
            # Named *.tmp so the janitor clears it should chunkd die mid-probe.
            probe = os.path.join(directory, f".health-{os.getpid()}-{secrets.token_hex(4)}.tmp")
            try:
                fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as e:
                return f"the {label} is not writable ({e.strerror})"
            try:
                os.write(fd, b"ok")
            except OSError as e:
                return f"the {label} is not writable ({e.strerror})"
            finally:
                os.close(fd)
                # Even when the write failed (a full disk): never leave
                # probes behind among the application's files.
                try:
                    os.unlink(probe)
                except OSError:
                    pass
            if self.minFree:
                stats = os.statvfs(directory)
                free = stats.f_bavail * stats.f_frsize
                if free < self.minFree:
                    return (f"the {label} has {free} bytes free, "
                            f"below the floor of {self.minFree}")
        return None
