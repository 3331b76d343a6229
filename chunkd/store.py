"""
The upload store: records and data files under the storage directory.

Layout::

    <storage>/uploads/<id>.data   the upload's bytes, preallocated when the
                                  length is known, written at their offsets
    <storage>/uploads/<id>.json   its record (L{UploadRecord}), replaced
                                  atomically (temp file + os.replace)

The record on disk is the only truth: nothing about an upload lives only in
one process's memory, and the per-upload lock is an C{flock} on the data
file, which holds across processes (and across open file descriptions
within one).  So several chunkd processes, on one host or several, serve
one directory with no coordinator of their own; what each relies on:

  - C{flock} only, never fcntl/POSIX locks.  flock belongs to an open file
    description, so closing another descriptor of the same file (reading a
    record, hashing a data file) never drops it, as it would a POSIX lock;
    and GlusterFS keeps flock and POSIX locks in one lock space (flock
    against lockf conflicts there, unlike local Linux), so mixing the two
    kinds would deadlock against ourselves.  Measured on GlusterFS 10.3
    (../shared/docs/glusterfs.md): flock excludes across mounts and dies
    with a SIGKILLed holder within milliseconds.  Locks: the data file (an
    upload being written; shared for Resumable.js chunk writers), C{<id>.json.lock}
    (a record's read-modify-write), the hook spool files (a delivery being
    sent).
  - C{O_EXCL} creation (one winner among processes creating an upload of
    the same Resumable.js identifier) and C{rename} replacing a record
    atomically: both atomic across GlusterFS mounts.
  - C{posix_fallocate}, C{pwritev} at offsets from several hosts, and
    C{copy_file_range}: all work on GlusterFS.
  - Fresh reads.  A record another host replaced must be read as it is
    now: with GlusterFS's default client caches another mount reads stale
    sizes, data and deletions indefinitely, so chunkd needs the volume's
    performance caches off and mounts with C{direct-io-mode=enable} and
    zero attribute/entry timeouts (deploy/README.md).  A record read that
    answers C{ESTALE} (replaced under an open handle) is opened again.
  - A lost connection is a lost lock: GlusterFS with C{client.strict-locks}
    answers C{ENOTCONN}/C{EBADFD} to a host cut off from the volume; such a
    write is never recorded (L{chunkd.errors.LOST_LOCK}).

An offset or a chunk is recorded only after its bytes were C{fdatasync}ed,
so a crash can lose the tail of an upload but never claim bytes it lacks.

Upload ids are 128 random bits in hex; the store refuses any other id
before it touches the file system, so no client string becomes a path.
The store knows nothing of HTTP.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Generator, Iterator, List, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from chunkd.disk import DiskService
from chunkd.once import OneShotResult
from chunkd.events import POST_CREATE, POST_EXPIRE, POST_FINISH, POST_TERMINATE, UploadEvents
from chunkd.errors import (
    NO_SPACE,
    InsufficientStorage,
    UploadError,
    UploadGone,
    UploadLocked,
    dataGone,
    noSuchUpload,
)

_ID = re.compile(r"^[0-9a-f]{32}\Z")

ACTIVE = "active"
COMPLETE = "complete"
TERMINATED = "terminated"
EXPIRED = "expired"


def newUploadId() -> str:
    """
    A fresh upload id: 128 random bits, never derived from client input.
    """
    return secrets.token_hex(16)


def isUploadId(value: str) -> bool:
    return bool(_ID.match(value))


#: how often a record read that answered ESTALE is tried again
_STALE_RETRIES = 5

#: the record format written now; older records are upgraded on load.
RECORD_SCHEMA = 2

#: Space kept aside, in C{<storage>/uploads/reserve}, for recording what
#: reached the disk once it is full.  A record is replaced by writing a new
#: file, which needs a block of its own: without the reserve, a body that
#: filled the disk could not even record its offset.  A record update that
#: finds the disk full releases it a step at a time; creating an upload (and
#: each janitor sweep) restores it first.
RESERVE_SIZE = 1024 * 1024
RESERVE_STEP = 64 * 1024


@dataclass
class Publication:
    """
    Where a finished upload was handed to the application: its file in
    the completed-files area and what its sidecar says of it.
    """

    path: str
    name: str
    size: int
    sha256: str
    completedAt: float


@dataclass
class UploadRecord:
    """
    What chunkd knows of one upload, as stored in its record file.

    @ivar length: the total size, or C{None} while it is deferred.
    @ivar offset: bytes durably written from the start of the file (for
        sequential protocols such as tus).
    @ivar metadata: decoded key/value metadata (for hooks and downloads).
    @ivar expires: when an idle incomplete upload expires (epoch seconds).
    @ivar state: L{ACTIVE}, L{COMPLETE}, L{TERMINATED} or L{EXPIRED}; the
        last two are tombstones whose data is gone.
    @ivar published: set once the upload's file was moved to the completed
        area: the one mark of a published upload, for every protocol.
    @ivar publishing: the name a publication under way is moving the file
        to -- set before the move, so a publication cut short by a crash is
        found and finished rather than taken for lost data.
    @ivar extra: the protocol's own state (tus concatenation, a chunk map,
        token digests).  Only the protocol reads it; the store, hooks and
        janitor never do.
    @ivar subject: who created it (the subject of a bearer token, see
        L{chunkd.auth}), or C{None} without one; only the same subject
        finds it.  (Records from before auth have none.)
    @ivar sha256: the sha256 of a complete upload that stays where it was
        written (tus), once something asked for it
        (L{chunkd.uploads.UploadService.sha256Of}); a published upload's
        is its publication's.
    @ivar schema: the record format (L{RECORD_SCHEMA}).
    """

    id: str
    protocol: str
    length: Optional[int]
    offset: int = 0
    metadata: Dict[str, Optional[str]] = field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0
    expires: Optional[float] = None
    state: str = ACTIVE
    published: Optional[Publication] = None
    publishing: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    subject: Optional[str] = None
    sha256: Optional[str] = None
    schema: int = RECORD_SCHEMA

    @property
    def complete(self) -> bool:
        return self.state == COMPLETE

    def toJSON(self) -> bytes:
        # Not dataclasses.asdict: it deep-copies every value first, and a
        # record is written on every chunk.  Only the publication nests.
        raw = dict(vars(self))
        # Keys a newer chunkd wrote, kept as they were (see fromJSON).
        raw.update(raw.pop("_unknown", None) or {})
        for optional in ("sha256", "subject"):
            if raw[optional] is None:
                # Left out until known: a record without it reads the same
                # to a chunkd that predates the field (one of several
                # processes sharing the directory during an upgrade).
                del raw[optional]
        if self.published is not None:
            raw["published"] = vars(self.published)
        return json.dumps(raw, sort_keys=True).encode("utf-8")

    @classmethod
    def fromJSON(cls, data: bytes) -> "UploadRecord":
        raw = json.loads(data)
        if raw.get("schema", 1) < 2:
            _upgradeFrom1(raw)
        published = raw.pop("published", None)
        # A key this chunkd does not know comes from a newer one sharing the
        # directory: keep it (and write it back) rather than fail to read.
        unknown = {key: raw.pop(key) for key in list(raw) if key not in _RECORD_FIELDS}
        record = cls(**raw)
        if published is not None:
            record.published = Publication(**published)
        if unknown:
            setattr(record, "_unknown", unknown)
        return record


_RECORD_FIELDS = frozenset(f.name for f in fields(UploadRecord))


def _upgradeFrom1(raw: Dict[str, Any]) -> None:
    """
    A record written before the schema had a version: publication state
    lived among the protocol keys of C{extra} (C{path} and C{sha256}, with
    Resumable.js's C{completed} or the facade's C{finalized}, and
    C{publishing}).
    """
    extra = raw.setdefault("extra", {})
    path = extra.pop("path", None)
    sha256 = extra.pop("sha256", None)
    completed = extra.pop("completed", None) or {}
    finalized = extra.pop("finalized", None) or {}
    publishing = extra.pop("publishing", None)
    if publishing is not None:
        raw["publishing"] = publishing
    if isinstance(path, str) and isinstance(sha256, str):
        raw["published"] = {
            "path": path,
            "name": completed.get("name", os.path.basename(path)),
            "size": completed.get("size", finalized.get("size", raw.get("length") or 0)),
            "sha256": sha256,
            "completedAt": completed.get("completedAt", raw.get("updated", 0.0)),
        }
    raw["schema"] = RECORD_SCHEMA


class OpenUpload:
    """
    An upload opened for writing: its data file descriptor, holding the
    upload's exclusive lock until L{close}.
    """

    def __init__(self, store: "UploadStore", record: UploadRecord, fd: int) -> None:
        self.store = store
        self.record = record
        self.fd = fd
        self.closed = False

    def close(self) -> None:
        """
        Release the lock (closing the descriptor releases the C{flock}).
        """
        if not self.closed:
            self.closed = True
            os.close(self.fd)


class UploadStore:
    """
    Upload records and data files in one directory tree.
    """

    log = Logger()

    def __init__(
        self,
        directory: str,
        disk: DiskService,
        durable: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = os.path.abspath(directory)
        self.uploads = os.path.join(self.directory, "uploads")
        self.disk = disk
        self.durable = durable
        self.clock = clock
        self.events = UploadEvents()
        self.reservePath = os.path.join(self.uploads, "reserve")
        #: set while the start-up check (L{chunkd.services.Reconciler})
        #: goes over every record, fired when it ends: the janitor's first
        #: sweep, another pass over every record, waits for it
        self.startupCheck: Optional[OneShotResult[None]] = None
        os.makedirs(self.uploads, exist_ok=True)

    def _emit(self, event: str, record: UploadRecord) -> None:
        # Store methods run on the reactor or in the disk pool; listeners
        # always run on the reactor thread.
        self.disk.reactor.callFromThread(self.events.emit, event, record)

    # -- paths -------------------------------------------------------------

    def dataPath(self, uploadId: str) -> str:
        self._checkId(uploadId)
        return os.path.join(self.uploads, uploadId + ".data")

    def recordPath(self, uploadId: str) -> str:
        self._checkId(uploadId)
        return os.path.join(self.uploads, uploadId + ".json")

    def _checkId(self, uploadId: str) -> None:
        if not isUploadId(uploadId):
            raise noSuchUpload()

    # -- records -----------------------------------------------------------

    def get(self, uploadId: str) -> UploadRecord:
        """
        Read an upload's record.

        @raise UploadNotFound: no such upload (or a malformed id).
        """
        path = self.recordPath(uploadId)
        for attempt in range(_STALE_RETRIES):
            try:
                with open(path, "rb") as f:
                    return UploadRecord.fromJSON(f.read())
            except FileNotFoundError:
                raise noSuchUpload() from None
            except OSError as e:
                # On a shared file system (GlusterFS, NFS) a record another
                # host just replaced can answer ESTALE: the name now points
                # at the new file, so opening it again reads that one.
                if e.errno != errno.ESTALE or attempt == _STALE_RETRIES - 1:
                    raise
            except (ValueError, TypeError):
                self.log.error("unreadable record for upload {uploadId}", uploadId=uploadId)
                raise noSuchUpload() from None
        raise AssertionError("unreachable")

    def getLive(self, uploadId: str) -> UploadRecord:
        """
        Read an upload's record, refusing tombstones and expired uploads.

        @raise UploadNotFound: no such upload.
        @raise UploadGone: it was terminated or has expired.
        """
        return self.live(self.get(uploadId))

    def live(self, record: UploadRecord) -> UploadRecord:
        """
        C{record}, unless it is a tombstone or has expired.

        @raise UploadGone: it was terminated or has expired.
        """
        if record.state in (TERMINATED, EXPIRED):
            raise UploadGone(f"upload was {record.state}")
        if record.state == ACTIVE and record.expires is not None and record.expires <= self.clock():
            raise UploadGone("upload expired")
        return record

    def save(self, record: UploadRecord, durable: Optional[bool] = None, reserve: bool = True) -> None:
        """
        Replace the record atomically: a reader sees the old or the new one,
        never half of either.  With durability on, the new record reaches the
        disk before it replaces the old one.

        @param durable: C{False} for records whose loss in a crash costs
            nothing (a tombstone: after a crash its upload has no data, and
            reconciliation marks it expired anyway).
        @param reserve: on a full disk, draw on the space reserve
            (L{RESERVE_SIZE}) to write it: an existing upload's record
            must be able to say what reached the disk.  A new upload's
            first record does not.
        """
        if durable is None:
            durable = self.durable
        path = self.recordPath(record.id)
        data = record.toJSON()
        while True:
            temp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                try:
                    os.write(fd, data)
                    if durable:
                        os.fdatasync(fd)
                finally:
                    os.close(fd)
                break
            except OSError as e:
                try:
                    os.unlink(temp)
                except FileNotFoundError:
                    pass
                if not (reserve and e.errno in NO_SPACE and self._releaseReserve()):
                    raise
        os.replace(temp, path)

    # -- the space reserve ---------------------------------------------------

    def keepReserve(self) -> None:
        """
        Restore the space reserve to L{RESERVE_SIZE} if a full disk drew on
        it (or it was never made).  Blocking: run it in the disk pool.

        @raise OSError: no room for it (C{ENOSPC}); the reserve keeps what
            it had.
        """
        fd = os.open(self.reservePath, os.O_WRONLY | os.O_CREAT, 0o640)
        try:
            size = os.fstat(fd).st_size
            if size >= RESERVE_SIZE:
                return
            try:
                os.posix_fallocate(fd, 0, RESERVE_SIZE)
            except OSError as e:
                os.ftruncate(fd, size)  # give back whatever was allocated
                if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                    return  # a file system that cannot reserve: no reserve
                raise
        finally:
            os.close(fd)

    def _releaseReserve(self) -> bool:
        """
        Free one step of the space reserve to a record that needs it.

        @return: whether anything was freed (else the reserve is spent).
        """
        try:
            fd = os.open(self.reservePath, os.O_WRONLY)
        except FileNotFoundError:
            return False
        try:
            size = os.fstat(fd).st_size
            if not size:
                return False
            os.ftruncate(fd, max(0, size - RESERVE_STEP))
        finally:
            os.close(fd)
        self.log.warn("the storage is full: {freed} bytes of the space reserve released to record an upload",
                      freed=min(size, RESERVE_STEP))
        return True

    def recordIds(self) -> Generator[str, None, None]:
        """
        The id of every record, streamed from the directory as it is read:
        with a million uploads, a list of every name would be two million
        strings (some 200 MB) held at once.  Blocking, a few entries per
        step: step it in the disk pool.  Close it (or drop it) to close the
        directory.
        """
        with os.scandir(self.uploads) as entries:
            for entry in entries:
                name = entry.name
                if name.endswith(".json") and isUploadId(name[:-5]):
                    yield name[:-5]

    def records(self) -> Iterator[UploadRecord]:
        """
        Every readable record, streamed (L{recordIds}).
        """
        for uploadId in self.recordIds():
            try:
                yield self.get(uploadId)
            except UploadError:
                continue

    # -- life cycle --------------------------------------------------------

    def _createNow(self, record: UploadRecord) -> UploadRecord:
        # Runs in the disk pool: posix_fallocate may have to write zeros on
        # file systems without native support.
        path = self.dataPath(record.id)
        try:
            # The space reserve comes back before a new upload takes space.
            self.keepReserve()
        except OSError as e:
            if e.errno in NO_SPACE:
                raise InsufficientStorage("not enough disk space") from None
            raise
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            if record.length:
                os.posix_fallocate(fd, 0, record.length)
        except OSError as e:
            os.close(fd)
            os.unlink(path)
            if e.errno in NO_SPACE:
                raise InsufficientStorage(
                    f"not enough disk space for {record.length} bytes"
                ) from None
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
        os.close(fd)
        try:
            self.save(record, reserve=False)
        except OSError as e:
            os.unlink(path)
            if e.errno in NO_SPACE:
                raise InsufficientStorage("not enough disk space") from None
            raise
        return record

    def create(
        self,
        protocol: str,
        length: Optional[int],
        expireAfter: Optional[float],
        metadata: Optional[Dict[str, Optional[str]]] = None,
        extra: Optional[Dict[str, Any]] = None,
        uploadId: Optional[str] = None,
        subject: Optional[str] = None,
    ) -> Deferred[UploadRecord]:
        """
        Create an upload: its data file (preallocated when C{length} is
        known, so a full disk is refused now, not halfway) and its record.

        @param uploadId: a caller-derived id (a hash, never client text);
            a random one when C{None}.
        @return: a Deferred firing with the new record, or failing with
            L{InsufficientStorage}.
        """
        now = self.clock()
        record = UploadRecord(
            id=uploadId or newUploadId(),
            protocol=protocol,
            length=length,
            metadata=dict(metadata or {}),
            created=now,
            updated=now,
            expires=now + expireAfter if expireAfter else None,
            state=COMPLETE if length == 0 else ACTIVE,
            extra=dict(extra or {}),
            subject=subject,
        )
        if self.events.preCreate is not None:
            d = self.events.preCreate(record)
            d.addCallback(lambda _: self.disk.run(self._createNow, record))
        else:
            d = self.disk.run(self._createNow, record)
        return d.addCallback(self._created)

    def _created(self, record: UploadRecord) -> UploadRecord:
        self._emit(POST_CREATE, record)
        if record.state == COMPLETE:
            self._emit(POST_FINISH, record)
        return record

    def _openLocked(self, uploadId: str, lock: int, busy: str) -> OpenUpload:
        self.getLive(uploadId)
        try:
            fd = os.open(self.dataPath(uploadId), os.O_WRONLY)
        except FileNotFoundError:
            raise dataGone() from None
        try:
            fcntl.flock(fd, lock | fcntl.LOCK_NB)
            # Re-read under the lock: the holder before us may have moved it.
            record = self.getLive(uploadId)
            if lock == fcntl.LOCK_EX:
                # Reconciled on first touch, under the lock we hold, rather
                # than waiting for the start-up pass to come by: a write
                # never starts from an offset its data file does not hold.
                size = os.fstat(fd).st_size
                if record.offset > size and self._pullBack(uploadId, size):
                    record = self.getLive(uploadId)
            return OpenUpload(self, record, fd)
        except BlockingIOError:
            os.close(fd)
            raise UploadLocked(busy) from None
        except BaseException:
            os.close(fd)
            raise

    def open(self, uploadId: str) -> OpenUpload:
        """
        Open an upload for writing and take its exclusive lock.

        @raise UploadLocked: another request (in this or another process)
            holds it.
        @raise UploadNotFound, UploadGone: as L{getLive}.
        """
        return self._openLocked(uploadId, fcntl.LOCK_EX, "another request is writing to this upload")

    def tryLock(self, uploadId: str) -> Optional[int]:
        """
        Take an upload's exclusive lock if nobody holds it (for the janitor:
        an upload that is being written, however slowly, is never touched).

        @return: the descriptor holding the lock (close it to release), or
            C{None} if the upload is busy or has no data file.
        """
        try:
            fd = os.open(self.dataPath(uploadId), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @contextmanager
    def exclusively(self, uploadId: str) -> Iterator[bool]:
        """
        Hold an upload's exclusive lock for the block, if nobody else holds
        it: yields C{True} then (or when it has no data file at all: there
        is nothing to protect), C{False} when it is busy -- being written,
        however slowly, so it must be left alone.  Blocking: the janitor
        and the operator's tools (L{chunkd.inventory}) use it.
        """
        fd = self.tryLock(uploadId)
        if fd is None:
            yield not os.path.exists(self.dataPath(uploadId))
            return
        try:
            yield True
        finally:
            os.close(fd)

    def openShared(self, uploadId: str) -> OpenUpload:
        """
        Open an upload for writing alongside other writers (Resumable.js
        chunks of one file arrive several at once, each at its own offset).
        Takes a shared lock, so an exclusive holder (a termination) and the
        writers exclude each other; the record is updated under the short
        record lock of L{commit}.

        @raise UploadLocked: someone holds the upload exclusively.
        """
        return self._openLocked(uploadId, fcntl.LOCK_SH, "the upload is busy")

    def _updateNow(self, uploadId: str, mutate: Callable[[UploadRecord], Optional[bool]],
                   durable: Optional[bool] = None, touch: bool = True) -> UploadRecord:
        # Runs in the disk pool.  The record lock is an flock on a lock file
        # beside the record: it excludes other threads and other processes
        # for the few microseconds of a read-modify-write.  A mutation that
        # returns False changed nothing: nothing is written.
        lockFd = os.open(self.recordPath(uploadId) + ".lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(lockFd, fcntl.LOCK_EX)
            record = self.get(uploadId)
            before = record.state
            if mutate(record) is False:
                return record
            if touch:
                record.updated = self.clock()
            self.save(record, durable)
            if before != COMPLETE and record.state == COMPLETE:
                self._emit(POST_FINISH, record)
            return record
        finally:
            os.close(lockFd)

    def update(self, uploadId: str, mutate: Callable[[UploadRecord], Optional[bool]],
               touch: bool = True) -> Deferred[UploadRecord]:
        """
        Read the record afresh, apply C{mutate}, save it -- under the record
        lock, in the disk pool -- and fire with the new record.  A mutation
        that returns C{False} changed nothing, and nothing is written.

        @param touch: count it as activity (C{updated}, from which the
            janitor measures idle and completed uploads' ages); C{False} for
            a note that changes neither, such as a digest computed later.
        """
        return self.disk.run(self._updateNow, uploadId, mutate, None, touch)

    def commit(self, upload: OpenUpload, mutate: Callable[[UploadRecord], None]) -> Deferred[UploadRecord]:
        """
        Make the bytes written through C{upload} durable, then L{update} its
        record with C{mutate} -- in that order, in the disk pool, so an
        offset or a chunk is never recorded before its bytes are on disk.
        """

        def commitNow() -> UploadRecord:
            if self.durable:
                self.disk.fdatasync(upload.fd)
            upload.record = self._updateNow(upload.record.id, mutate)
            return upload.record

        return self.disk.run(commitNow)

    def terminate(self, uploadId: str, state: str = TERMINATED) -> bool:
        """
        Delete an upload's data and leave its record as a tombstone, so
        later requests learn it is gone (410) rather than unknown (404).
        The caller holds the upload's lock when it has data.

        Under the record lock, and only if it is not a tombstone already:
        two processes' janitors (or a janitor and a DELETE) may both decide
        to end an upload whose data is gone, and only one may announce it.
        The tombstone need not be durable: after a crash its upload has no
        data, and reconciliation makes it one again.

        @return: whether this call ended it.
        """
        ended: List[UploadRecord] = []

        def tombstone(record: UploadRecord) -> bool:
            if record.state in (TERMINATED, EXPIRED):
                return False
            try:
                os.unlink(self.dataPath(uploadId))
            except FileNotFoundError:
                pass
            record.state = state
            ended.append(record)
            return True

        record = self._updateNow(uploadId, tombstone, durable=False)
        if not ended:
            return False
        self._emit(POST_EXPIRE if state == EXPIRED else POST_TERMINATE, record)
        return True

    def discard(self, uploadId: str) -> None:
        """
        Remove every trace of an upload that its creating request refused
        (tus creation-with-upload whose body failed): no client was ever
        told its id, so no tombstone is owed.  Blocking: run it in the
        disk pool.
        """
        self._checkId(uploadId)
        for path in (self.recordPath(uploadId), self.dataPath(uploadId), self.recordPath(uploadId) + ".lock"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def reconcile(self, stopping: Callable[[], bool] = lambda: False) -> Dict[str, int]:
        """
        Check every record against its data file (L{reconcileOne}) in one
        go.  Blocking: run it in the disk pool.  (chunkd's start-up check
        goes a batch at a time instead: L{Reconciliation}.)

        @param stopping: asked between records; C{True} ends the pass.
        @return: counts for the log.
        """
        check = Reconciliation(self)
        try:
            while not stopping() and not check.step(1):
                pass
        finally:
            check.close()
        return check.counts

    def reconcileOne(self, record: UploadRecord) -> Optional[str]:
        """
        Correct one record against its data file: an active record whose
        data is missing becomes a tombstone (C{"missing"}); a recorded
        offset beyond the data file (impossible unless files were tampered
        with) is pulled back to what the file holds (C{"truncated"}).
        Blocking: start-up reconciliation and C{chunkctl fsck --repair}
        (L{chunkd.inventory}) both call it.

        Other processes may be serving this directory meanwhile, so an
        upload is corrected only under its own lock, and one that somebody
        holds -- it is being written, so it is alive -- is left alone
        (C{"busy"}); every correction re-reads the record under the record
        lock.

        @return: what was done, or C{None} when nothing needed doing.
        """
        if record.state not in (ACTIVE, COMPLETE):
            return None
        if record.published is not None or record.publishing is not None:
            return None  # its data moved (or is moving) to the completed-files area
        uploadId = record.id
        dataPath = self.dataPath(uploadId)
        try:
            if record.offset <= os.stat(dataPath).st_size:
                return None  # the usual case: nothing to correct, no lock needed
        except FileNotFoundError:
            pass
        done: List[str] = []
        fd = self.tryLock(uploadId)
        if fd is None:
            if os.path.exists(dataPath):
                return "busy"

            def expireIfStillMissing(r: UploadRecord) -> None:
                if (r.state in (ACTIVE, COMPLETE) and r.published is None and r.publishing is None
                        and not os.path.exists(dataPath)):
                    r.state = EXPIRED
                    done.append("missing")

            self._updateNow(uploadId, expireIfStillMissing)
            return done[0] if done else None
        try:
            size = os.fstat(fd).st_size
            if record.offset <= size:
                return None
            return "truncated" if self._pullBack(uploadId, size) else None
        finally:
            os.close(fd)

    def _pullBack(self, uploadId: str, size: int) -> bool:
        """
        Pull a recorded offset beyond the data file's C{size} back to it
        (and a complete upload back to active).  The caller holds the
        upload's exclusive lock; the record is re-read under the record
        lock.  Blocking.

        @return: whether the record was corrected.
        """
        done: List[bool] = []

        def pullBack(r: UploadRecord) -> Optional[bool]:
            if r.offset <= size or r.published is not None or r.publishing is not None:
                return False
            r.offset = size
            r.state = ACTIVE
            done.append(True)
            return None

        self._updateNow(uploadId, pullBack)
        if done:
            self.log.warn("upload {uploadId}: recorded offset beyond its data, pulled back to {size}",
                          uploadId=uploadId, size=size)
        return bool(done)

    def stray(self, name: str) -> Optional[str]:
        """
        What a file in C{uploads/} that belongs to no upload is: C{"temp"}
        (a record write that never finished), C{"data"} or C{"lock"} (a
        data or record-lock file whose record is gone), else C{None} (a
        record, or a file of a live upload).  The janitor removes strays
        once C{janitor.orphan_after} old; C{chunkctl fsck} reports them.
        Blocking (one C{stat}).
        """
        stem = name.split(".", 1)[0]
        if name.endswith(".tmp"):
            return "temp"
        for suffix, kind in ((".data", "data"), (".json.lock", "lock")):
            if name == stem + suffix and isUploadId(stem):
                if os.path.exists(os.path.join(self.uploads, stem + ".json")):
                    return None
                return kind
        return None


class Reconciliation:
    """
    One pass of L{UploadStore.reconcileOne} over every record, a batch at a
    time: each L{step} is a short job for the disk pool, so the pass never
    holds a disk thread for long, can stop between batches, and holds one
    batch in memory whatever the number of records (the directory is
    streamed, L{UploadStore.recordIds}).

    @ivar counts: records checked, and what was done (for the log).
    """

    def __init__(self, store: UploadStore) -> None:
        self.store = store
        self.counts = {"records": 0, "missing": 0, "truncated": 0, "busy": 0}
        self._ids: Optional[Generator[str, None, None]] = None
        self.finished = False

    def step(self, size: int) -> bool:
        """
        Check up to C{size} more records.  Blocking: run it in the disk
        pool, one step at a time.

        @return: whether the pass is over (every record checked).
        """
        if self.finished:
            return True
        if self._ids is None:
            self._ids = self.store.recordIds()
        for _ in range(size):
            uploadId = next(self._ids, None)
            if uploadId is None:
                self.close()
                self.finished = True
                return True
            try:
                record = self.store.get(uploadId)
            except UploadError:
                continue  # gone meanwhile, or unreadable (logged by get)
            self.counts["records"] += 1
            try:
                outcome = self.store.reconcileOne(record)
            except UploadError:
                continue  # gone meanwhile
            if outcome is not None:
                self.counts[outcome] += 1
        return False

    def close(self) -> None:
        """
        Close the directory (a pass that stops early).
        """
        ids, self._ids = self._ids, None
        if ids is not None:
            ids.close()


def expiryDeadline(record: UploadRecord, expireAfter: float) -> Optional[float]:
    """
    When an active upload expires: its announced C{expires}, else C{updated}
    plus C{janitor.expire_after} (C{expireAfter}; 0 = never), else C{None}.
    The janitor expires by it; the operator's views show it.
    """
    if record.expires is not None:
        return record.expires
    if expireAfter:
        return record.updated + expireAfter
    return None
