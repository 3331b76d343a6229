"""
The inventory: what the store holds, seen and mended by an operator.

One module reads the store for both operator tools -- C{chunkctl} (a
separate process, on the storage directory directly, with chunkd running
or stopped) and the admin view inside the daemon (L{chunkd.admin}) -- so
the rules exist once: which state an upload is in, when it expires, what
counts as damage and how it is mended.

Everything here is blocking file work: C{chunkctl} calls it directly, the
daemon in its disk pool.  It is safe beside any number of running chunkd
processes because it takes the daemon's own locks: an upload is ended or
repaired only under its exclusive C{flock} (L{UploadStore.exclusively}),
records change only through the store's read-modify-write under the record
lock, and ending an upload goes through L{UploadStore.terminate}, as a tus
DELETE and the janitor's expiry do, so tombstones and hooks are the same.
Looking never locks (a lock taken just to look would answer a client's
write with 423 for that instant); whether an upload is being written is
read from the kernel's lock table, C{/proc/locks}, which shows this host's
locks only.

fsck's checks (L{Inventory.check}), each with its repair:

  - C{record-without-data}: an unfinished upload whose data file is gone:
    it becomes an expired tombstone (L{UploadStore.reconcileOne}, as at
    start-up).
  - C{offset-beyond-data}: a recorded offset past the end of the data file:
    pulled back to what the file holds (the client resumes from there).
  - C{sha256-mismatch}: a published file whose bytes no longer hash to the
    recorded sha256: the file and its sidecar move to C{<storage>/quarantine/}
    and the upload is terminated (a post-terminate hook tells the
    application), since handing out those bytes as the upload would lie.
  - C{unreadable-record}: a record that is not valid JSON: moved, with its
    data file, to the quarantine.
  - C{data-without-record}, C{stale-lock}, C{stale-temp}: leftovers of a
    crash (L{UploadStore.stray}; temp files of the completed area and the
    hook spool too): removed.  Only those older than L{STRAY_GRACE}: a
    younger one may be an upload being created right now.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from chunkd.complete import CompletedFiles
from chunkd.config import Config
from chunkd.disk import DiskService
from chunkd.errors import Conflict, UploadError, UploadGone, UploadLocked
from chunkd.hooks import spoolEvent
from chunkd.store import (
    ACTIVE,
    COMPLETE,
    EXPIRED,
    TERMINATED,
    UploadRecord,
    UploadStore,
    expiryDeadline,
    isUploadId,
)

#: a stray file younger than this may belong to an upload being created
#: (its data file exists a moment before its record): fsck leaves it be.
STRAY_GRACE = 60.0

STATES = (ACTIVE, COMPLETE, EXPIRED, TERMINATED)

#: the problems fsck knows, in the order it reports them
PROBLEMS = ("unreadable-record", "record-without-data", "offset-beyond-data", "sha256-mismatch",
            "data-without-record", "stale-lock", "stale-temp")

Progress = Callable[[List[str]], Iterable[str]]


def _noProgress(names: List[str]) -> Iterable[str]:
    return names


@dataclass
class UploadSummary:
    """
    One upload as an operator sees it.

    @ivar state: as a client would find it now: an active upload whose
        deadline has passed is C{expired} even before the janitor's sweep.
    @ivar writing: its data file is locked by a writer on this host.
    """

    id: str
    state: str
    protocol: str
    size: Optional[int]
    offset: int
    created: float
    updated: float
    expires: Optional[float]
    subject: Optional[str]
    filename: Optional[str]
    published: Optional[str]
    sha256: Optional[str]
    writing: bool

    def asDict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class Problem:
    """
    One thing fsck found, and what its repair does.

    @ivar busy: the upload is being written: never repaired.
    """

    kind: str
    path: str
    detail: str
    repair: str
    uploadId: Optional[str] = None
    busy: bool = False

    def asDict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class Stats:
    """Counts and bytes over the whole store."""

    uploads: int = 0
    states: Dict[str, int] = field(default_factory=dict)
    protocols: Dict[str, int] = field(default_factory=dict)
    writing: int = 0
    receivedBytes: int = 0
    dataBytes: int = 0
    publishedBytes: int = 0
    oldestActive: Optional[float] = None
    hooksPending: int = 0
    diskFree: int = 0
    diskTotal: int = 0

    def asDict(self) -> Dict[str, Any]:
        return asdict(self)


class _Inline:
    """
    The reactor of a process without one (C{chunkctl}): the store's events
    run at once, on the calling thread.
    """

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


def offlineStore(config: Config) -> UploadStore:
    """
    The store of C{config} for a process that runs no reactor (C{chunkctl}).
    Its events spool hook deliveries exactly as a daemon's would
    (L{chunkd.hooks.spoolEvent}); whichever chunkd runs sends them.
    """
    store = UploadStore(config.storage.directory, DiskService(_Inline(), 1),
                        durable=config.storage.durable)

    def spool(event: str, record: UploadRecord) -> None:
        spoolEvent(config, store, event, record)

    store.events.subscribe(spool)
    return store


def heldLocks() -> Set[Tuple[int, int]]:
    """
    The files some process on this host holds an C{flock} on, as C{(st_dev,
    st_ino)} pairs, from C{/proc/locks}: a look that takes no lock, so no
    client is refused for it.  Empty where there is no such table.
    """
    held: Set[Tuple[int, int]] = set()
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return held
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (a blocked
        # waiter has "->" after the number, shifting the fields).
        if "->" in parts:
            continue
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            major, minor, inode = parts[5].split(":")
            held.add((os.makedev(int(major, 16), int(minor, 16)), int(inode)))
        except ValueError:
            continue
    return held


def sha256Of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(1024 * 1024)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def age(seconds: float) -> str:
    """A short human duration: C{45s}, C{12m}, C{3h}, C{2d}."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


class Inventory:
    """
    The operator's reading (and mending) of one store.

    @param clock: now, in epoch seconds (the store's clock by default).
    """

    def __init__(self, store: UploadStore, config: Config,
                 clock: Optional[Callable[[], float]] = None) -> None:
        self.store = store
        self.config = config
        self.clock = clock or store.clock
        self.quarantine = os.path.join(store.directory, "quarantine")

    # -- looking ---------------------------------------------------------------

    def stateOf(self, record: UploadRecord, now: float) -> str:
        """As a client would find it (L{UploadStore.live}'s rule)."""
        if record.state == ACTIVE:
            deadline = expiryDeadline(record, self.config.janitor.expire_after)
            if deadline is not None and deadline <= now:
                return EXPIRED
        return record.state

    def summarize(self, record: UploadRecord, now: float,
                  locks: Optional[Set[Tuple[int, int]]] = None) -> UploadSummary:
        writing = False
        if locks and record.state in (ACTIVE, COMPLETE):
            try:
                st = os.stat(self.store.dataPath(record.id))
                writing = (st.st_dev, st.st_ino) in locks
            except OSError:
                pass
        published = record.published
        return UploadSummary(
            id=record.id, state=self.stateOf(record, now), protocol=record.protocol,
            size=record.length, offset=record.offset, created=record.created,
            updated=record.updated,
            expires=expiryDeadline(record, self.config.janitor.expire_after)
            if record.state == ACTIVE else None,
            subject=record.subject,
            filename=published.name if published is not None else
            (record.metadata.get("filename") or record.metadata.get("name")),
            published=published.path if published is not None else None,
            sha256=published.sha256 if published is not None else None,
            writing=writing)

    def _recordNames(self, progress: Progress) -> Iterable[str]:
        names = sorted(n[:-5] for n in os.listdir(self.store.uploads)
                       if n.endswith(".json") and isUploadId(n[:-5]))
        return progress(names)

    def uploads(self, states: Optional[Iterable[str]] = None, protocol: Optional[str] = None,
                olderThan: Optional[float] = None,
                progress: Progress = _noProgress) -> List[UploadSummary]:
        """
        Every upload with a readable record, oldest first, filtered: by
        state (as L{stateOf}), by protocol, by age since creation.
        """
        now = self.clock()
        wanted = set(states) if states else None
        locks = heldLocks()
        found = []
        for uploadId in self._recordNames(progress):
            try:
                record = self.store.get(uploadId)
            except UploadError:
                continue
            if protocol is not None and record.protocol != protocol:
                continue
            if olderThan is not None and now - record.created < olderThan:
                continue
            summary = self.summarize(record, now, locks)
            if wanted is not None and summary.state not in wanted:
                continue
            found.append(summary)
        found.sort(key=lambda s: (s.created, s.id))
        return found

    def show(self, uploadId: str) -> Dict[str, Any]:
        """
        One upload in full: its summary, the record as stored, and its data
        file's size on disk.

        @raise UploadNotFound: no such upload (or not an upload id).
        """
        record = self.store.get(uploadId)
        shown = self.summarize(record, self.clock(), heldLocks()).asDict()
        try:
            shown["dataFileSize"] = os.stat(self.store.dataPath(uploadId)).st_size
        except FileNotFoundError:
            shown["dataFileSize"] = None
        shown["metadata"] = record.metadata
        shown["record"] = json.loads(record.toJSON())
        return shown

    def stats(self, progress: Progress = _noProgress) -> Stats:
        now = self.clock()
        stats = Stats(states={s: 0 for s in STATES})
        locks = heldLocks()
        for uploadId in self._recordNames(progress):
            try:
                record = self.store.get(uploadId)
            except UploadError:
                continue
            summary = self.summarize(record, now, locks)
            stats.uploads += 1
            stats.states[summary.state] = stats.states.get(summary.state, 0) + 1
            stats.protocols[record.protocol] = stats.protocols.get(record.protocol, 0) + 1
            stats.writing += summary.writing
            if summary.state == ACTIVE:
                stats.receivedBytes += record.offset
                if stats.oldestActive is None or record.created < stats.oldestActive:
                    stats.oldestActive = record.created
            if record.published is not None:
                stats.publishedBytes += record.published.size
            try:
                st = os.stat(self.store.dataPath(uploadId))
                stats.dataBytes += st.st_blocks * 512
            except FileNotFoundError:
                pass
        spool = os.path.join(self.store.directory, "hooks")
        if os.path.isdir(spool):
            stats.hooksPending = sum(1 for n in os.listdir(spool) if n.endswith(".json"))
        vfs = os.statvfs(self.store.directory)
        stats.diskFree = vfs.f_bavail * vfs.f_frsize
        stats.diskTotal = vfs.f_blocks * vfs.f_frsize
        return stats

    # -- acting ----------------------------------------------------------------

    def end(self, uploadId: str, state: str) -> UploadRecord:
        """
        Expire (C{state} L{EXPIRED}) or delete (L{TERMINATED}) one upload
        now, as the janitor's expiry and a tus DELETE do: its data goes, a
        tombstone stays, the store announces it (hooks).  A published file
        belongs to the application and stays where it is.

        @raise UploadNotFound: no such upload.
        @raise UploadGone: it is a tombstone already.
        @raise UploadLocked: it is being written: left alone.
        @raise UploadError: expiring a finished upload (delete it instead).
        """
        record = self.store.get(uploadId)
        if record.state in (TERMINATED, EXPIRED):
            raise UploadGone(f"upload was {record.state} already")
        if state == EXPIRED and record.state != ACTIVE:
            raise Conflict("only an unfinished upload expires; delete a finished one")
        with self.store.exclusively(uploadId) as held:
            if not held:
                raise UploadLocked("the upload is being written; it was left alone")
            if not self.store.terminate(uploadId, state=state):
                raise UploadGone("upload was ended meanwhile")
        return self.store.get(uploadId)

    # -- fsck ------------------------------------------------------------------

    def check(self, progress: Progress = _noProgress, hashes: bool = True) -> List[Problem]:
        """
        Every problem of L{PROBLEMS} in the store (see the module
        docstring), without changing anything.

        @param hashes: read every published file to check its sha256.
        """
        now = self.clock()
        locks = heldLocks()
        problems: List[Problem] = []
        uploads = self.store.uploads
        names = sorted(os.listdir(uploads))
        for name in progress(names):
            path = os.path.join(uploads, name)
            stem = name.split(".", 1)[0]
            if name == stem + ".json" and isUploadId(stem):
                problems.extend(self._checkRecord(stem, path, locks, hashes))
                continue
            kind = self.store.stray(name)
            if kind is None or not self._old(path, now):
                continue
            if kind == "data":
                busy = self._locked(path, locks)
                problems.append(Problem(
                    "data-without-record", path, f"{_size(path)} bytes with no record",
                    "none: a writer holds it" if busy else "remove the data file",
                    uploadId=stem, busy=busy))
            elif kind == "lock":
                problems.append(Problem("stale-lock", path, "a record lock file with no record",
                                        "remove it", uploadId=stem))
            else:
                problems.append(Problem("stale-temp", path, "a record write that never finished",
                                        "remove it", uploadId=stem if isUploadId(stem) else None))
        for directory, label in ((self.config.completeDirectory, "a sidecar write"),
                                 (os.path.join(self.store.directory, "hooks"), "a hook spool write")):
            if not os.path.isdir(directory):
                continue
            for name in sorted(os.listdir(directory)):
                path = os.path.join(directory, name)
                if name.endswith(".tmp") and self._old(path, now):
                    problems.append(Problem("stale-temp", path, f"{label} that never finished",
                                            "remove it"))
        problems.sort(key=lambda p: (PROBLEMS.index(p.kind), p.path))
        return problems

    def _old(self, path: str, now: float) -> bool:
        try:
            return now - os.lstat(path).st_mtime >= STRAY_GRACE
        except FileNotFoundError:
            return False

    def _locked(self, path: str, locks: Set[Tuple[int, int]]) -> bool:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) in locks

    def _checkRecord(self, uploadId: str, path: str, locks: Set[Tuple[int, int]],
                     hashes: bool) -> List[Problem]:
        try:
            with open(path, "rb") as f:
                record = UploadRecord.fromJSON(f.read())
        except FileNotFoundError:
            return []  # forgotten meanwhile
        except (ValueError, TypeError, AttributeError):
            return [Problem("unreadable-record", path, "not a valid upload record",
                            f"move it (and its data file) to {self.quarantine}", uploadId=uploadId)]
        if record.state not in (ACTIVE, COMPLETE):
            return []
        if record.published is not None:
            return self._checkPublished(record, hashes) if hashes else []
        if record.publishing is not None:
            return []  # a publication under way (or cut short: the next request finishes it)
        dataPath = self.store.dataPath(uploadId)
        try:
            size = os.stat(dataPath).st_size
        except FileNotFoundError:
            return [Problem("record-without-data", path,
                            f"{record.state} {record.protocol} upload, its data file is missing",
                            "mark the upload expired (a tombstone)", uploadId=uploadId)]
        if record.offset > size:
            busy = self._locked(dataPath, locks)
            return [Problem("offset-beyond-data", dataPath,
                            f"recorded offset {record.offset} but the file holds {size} bytes",
                            "none: a writer holds it" if busy else f"pull the offset back to {size}",
                            uploadId=uploadId, busy=busy)]
        return []

    def _checkPublished(self, record: UploadRecord, hashes: bool) -> List[Problem]:
        published = record.published
        assert published is not None
        if not CompletedFiles.owns(published.path, record.id, record.created):
            # The application took it (its to keep), and the name may now
            # hold another upload's file.
            return []
        actual = sha256Of(published.path)
        if actual == published.sha256:
            return []
        return [Problem("sha256-mismatch", published.path,
                        f"sha256 {actual[:16]}... but {published.sha256[:16]}... was recorded",
                        f"move the file and its sidecar to {self.quarantine} and terminate the upload",
                        uploadId=record.id)]

    def repair(self, problem: Problem) -> str:
        """
        Mend one problem L{check} found, after checking again, under the
        upload's lock, that it is still there.

        @return: what was done, one line.
        """
        if problem.busy:
            return "left alone: a writer holds it"
        handler = getattr(self, "_repair_" + problem.kind.replace("-", "_"))
        try:
            return str(handler(problem))
        except UploadLocked:
            return "left alone: a writer holds it"
        except UploadError as e:
            return f"nothing to do any more ({e.reason})"

    def _repair_record_without_data(self, problem: Problem) -> str:
        assert problem.uploadId is not None
        outcome = self.store.reconcileOne(self.store.get(problem.uploadId))
        return {"missing": "marked expired", "busy": "left alone: a writer holds it"}.get(
            outcome or "", "nothing to do any more")

    def _repair_offset_beyond_data(self, problem: Problem) -> str:
        assert problem.uploadId is not None
        outcome = self.store.reconcileOne(self.store.get(problem.uploadId))
        if outcome == "truncated":
            return f"offset pulled back to {self.store.get(problem.uploadId).offset}"
        return {"busy": "left alone: a writer holds it", "missing": "marked expired"}.get(
            outcome or "", "nothing to do any more")

    def _repair_sha256_mismatch(self, problem: Problem) -> str:
        uploadId = problem.uploadId
        assert uploadId is not None
        with self.store.exclusively(uploadId) as held:
            if not held:
                raise UploadLocked("busy")
            record = self.store.get(uploadId)
            published = record.published
            if (record.state != COMPLETE or published is None or not os.path.exists(published.path)
                    or sha256Of(published.path) == published.sha256):
                return "nothing to do any more"
            target = self._toQuarantine(published.path, f"{uploadId}.{published.name}")
            if os.path.exists(published.path + ".json"):
                self._toQuarantine(published.path + ".json", f"{uploadId}.{published.name}.json")
            self.store.terminate(uploadId, state=TERMINATED)
        return f"moved to {target}; upload terminated"

    def _repair_unreadable_record(self, problem: Problem) -> str:
        uploadId = problem.uploadId
        assert uploadId is not None
        with self.store.exclusively(uploadId) as held:
            if not held:
                raise UploadLocked("busy")
            target = self._toQuarantine(problem.path, uploadId + ".json")
            data = self.store.dataPath(uploadId)
            if os.path.exists(data):
                self._toQuarantine(data, uploadId + ".data")
        return f"moved to {target}"

    def _repair_data_without_record(self, problem: Problem) -> str:
        uploadId = problem.uploadId
        assert uploadId is not None
        with self.store.exclusively(uploadId) as held:
            if not held:
                raise UploadLocked("busy")
            if os.path.exists(self.store.recordPath(uploadId)):
                return "nothing to do any more (its record appeared)"
            _unlink(problem.path)
        return "removed"

    def _repair_stale_lock(self, problem: Problem) -> str:
        uploadId = problem.uploadId
        assert uploadId is not None
        if os.path.exists(self.store.recordPath(uploadId)):
            return "nothing to do any more (its record appeared)"
        _unlink(problem.path)
        return "removed"

    def _repair_stale_temp(self, problem: Problem) -> str:
        _unlink(problem.path)
        return "removed"

    def _toQuarantine(self, path: str, name: str) -> str:
        os.makedirs(self.quarantine, exist_ok=True)
        target = os.path.join(self.quarantine, name)
        n = 0
        while os.path.lexists(target):
            n += 1
            target = os.path.join(self.quarantine, f"{name}.{n}")
        shutil.move(path, target)
        return target


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
