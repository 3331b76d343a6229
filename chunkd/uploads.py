"""
The upload layer: what every protocol does to an upload, written once.

Protocol modules (L{chunkd.protocols}) translate HTTP into calls here and
the results back into answers; this layer knows no header, path or status
line.  It owns:

  - finding an upload (another protocol's upload does not exist for this
    one) and creating one (limits, expiry, the pre-create hook and events,
    through the store);
  - L{UploadService.write}: one request body into one upload -- the lock
    the caller took, the limit, digests fed in the disk thread, offset
    checkpoints while a long body streams, the whole-or-partial policy,
    the one disk-error map, the commit that records only durable bytes, and
    the release of the lock whatever happens;
  - the record updates protocols share: a sequential offset advanced, an
    expiry refreshed;
  - termination.

Publishing a finished upload is L{chunkd.publish.Publisher}'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Dict, FrozenSet, List, Optional, Union

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure

from chunkd.auth import ANONYMOUS, Principal
from chunkd.config import Config
from chunkd.disk import DiskService
from chunkd.errors import (
    NO_SPACE,
    ChecksumMismatch,
    Conflict,
    OffsetMismatch,
    TooLarge,
    UploadError,
    dataGone,
    diskError,
    noSuchUpload,
)
from chunkd.hashes import sha256OfFile
from chunkd.live import LiveUploads, Streaming
from chunkd.once import OneShotResult, SharedWork
from chunkd.publish import Publisher
from chunkd.sinks import BodyOutcome, FileSink
from chunkd.quotas import ActiveUploads
from chunkd.store import ACTIVE, COMPLETE, OpenUpload, UploadRecord, UploadStore, newUploadId

Mutation = Callable[[UploadRecord], None]
Verifier = Callable[[BodyOutcome], Union[None, "Deferred[None]", Awaitable[None]]]


@dataclass
class Checksum:
    """
    A digest the client announced for a body: the body counts whole or not
    at all.

    @ivar digest: a fresh hash object of the announced algorithm, fed as
        the bytes are written.
    @ivar expected: the digest the client sent.
    @ivar mismatch: the reason given when they differ.
    """

    digest: Any
    expected: bytes
    mismatch: str = "the checksum does not match the body"

    def verify(self, outcome: BodyOutcome) -> None:
        if not outcome.complete:
            raise ChecksumMismatch("the body was cut off; its checksum cannot match")
        if self.digest.digest() != self.expected:
            raise ChecksumMismatch(self.mismatch)


@dataclass
class WritePlan:
    """
    How one body goes into one upload, as its protocol decided from the
    headers.

    @ivar offset: where the body's first byte goes.
    @ivar limit: the most bytes the body may bring (C{None}: no limit).
    @ivar overflow: the answer when it brings more (nothing more is written).
    @ivar recorded: the record update for a body whose bytes end at the
        given offset (of the file); applied only once they are durable.
    @ivar checksum: a digest the body must match (whole or nothing).
    @ivar verify: the protocol's own last check of the outcome (a chunk
        must arrive whole; a checksum sent as a trailer); may return a
        Deferred.  Raising refuses the body: nothing is recorded.
    @ivar runningHash: feed the upload's running sha256 (sequential
        uploads that are published later).
    @ivar checkpoints: record the offset every C{storage.checkpoint_every}
        bytes while the body streams (only for a body that can neither
        fail a checksum nor overflow: its length is known and within the
        limit).
    @ivar progress: told each checkpoint's offset once it is recorded
        (durable): what a protocol may report to the client as received
        for good while the body still streams.
    """

    offset: int
    limit: Optional[int]
    recorded: Callable[[int], Mutation]
    overflow: UploadError = field(default_factory=lambda: TooLarge("the body runs past the upload's length"))
    checksum: Optional[Checksum] = None
    verify: Optional[Verifier] = None
    runningHash: bool = False
    checkpoints: bool = False
    progress: Optional[Callable[[int], None]] = None


class UploadService:
    """
    The protocol-neutral upload layer over one store.
    """

    log = Logger()

    def __init__(self, config: Config, store: UploadStore, disk: DiskService, publisher: Publisher) -> None:
        self.config = config
        self.store = store
        self.disk = disk
        self.publisher = publisher
        self.hashes = publisher.hashes
        self.activeUploads = ActiveUploads(store)
        self._hashing: SharedWork[str] = SharedWork()
        #: the bodies streaming now, for the admin view (set by the app)
        self.live: Optional[LiveUploads] = None

    def reconfigure(self, config: Config) -> None:
        """Limits, expiry and disk tuning apply to the next request."""
        self.config = config

    # -- finding and creating ------------------------------------------------

    def find(self, uploadId: str, protocol: Union[str, FrozenSet[str]],
             principal: Principal = ANONYMOUS) -> UploadRecord:
        """
        A live upload of C{protocol} (or of one of a set of protocols that
        share their rules, as tus and the IETF draft do) that C{principal}
        may see.  Another protocol's upload is not found: its rules would
        not apply to it.
        Nor is another subject's, tombstone or not: to them it answers
        exactly as an id that never existed.

        @raise Forbidden: the principal's token is for another upload.
        @raise UploadNotFound: no such upload (of this protocol, of this
            subject).
        @raise UploadGone: terminated or expired.
        """
        principal.checkUpload(uploadId)
        record = self.store.get(uploadId)
        protocols = {protocol} if isinstance(protocol, str) else protocol
        if record.protocol not in protocols or record.subject != principal.subject:
            raise noSuchUpload()
        return self.store.live(record)

    def open(self, uploadId: str, protocol: Union[str, FrozenSet[str]],
             principal: Principal = ANONYMOUS) -> OpenUpload:
        """
        A live upload of C{protocol} that C{principal} may see, locked for
        writing.

        @raise UploadLocked: another request is writing to it.
        """
        self.find(uploadId, protocol, principal)
        return self.store.open(uploadId)

    @property
    def maxSize(self) -> int:
        return self.config.limits.max_size

    def maxSizeFor(self, principal: Principal) -> int:
        """
        The largest upload C{principal} may create (0: no limit): the
        smaller of C{limits.max_size} and its token's C{max_size}.
        """
        limits = [n for n in (self.maxSize, principal.maxSize) if n]
        if principal.maxSize == 0:
            limits.append(0)
        return min(limits) if limits else 0

    def checkSize(self, length: Optional[int], what: str = "Upload-Length",
                  principal: Principal = ANONYMOUS) -> None:
        """
        @raise TooLarge: C{length} is over C{limits.max_size} or the
            principal's token's C{max_size}.
        """
        if self.maxSize and length is not None and length > self.maxSize:
            raise TooLarge(f"{what} exceeds the maximum of {self.maxSize} bytes")
        principal.checkSize(length, what)

    def create(
        self,
        protocol: str,
        length: Optional[int],
        metadata: Optional[Dict[str, Optional[str]]] = None,
        extra: Optional[Dict[str, Any]] = None,
        uploadId: Optional[str] = None,
        expires: bool = True,
        principal: Principal = ANONYMOUS,
    ) -> "Deferred[UploadRecord]":
        """
        Create an upload owned by C{principal}'s subject (the store
        preallocates its file, runs the pre-create hook and announces it).

        @param expires: whether it expires when idle (a tus final
            concatenation, made of finished parts, does not).
        @raise Forbidden: the principal's token is for one existing upload.
        @raise TooLarge: C{length} is over a limit.
        @return: the new record, or a failure with L{TooManyRequests} when
            the subject has C{limits.max_active_uploads} unfinished
            uploads already (L{chunkd.quotas}).
        """
        # A token for one upload creates nothing else (a derived id, as
        # Resumable.js's, may be that very upload).
        principal.checkUpload(uploadId if uploadId == principal.upload else None)
        self.checkSize(length, principal=principal)
        expireAfter = self.config.janitor.expire_after if expires else None
        subject, limit = principal.subject, self.config.limits.max_active_uploads
        if subject is None or not limit:
            return self.store.create(protocol, length, expireAfter, metadata=metadata, extra=extra,
                                     uploadId=uploadId, subject=subject)
        newId = uploadId or newUploadId()

        def create() -> "Deferred[UploadRecord]":
            return self.store.create(protocol, length, expireAfter, metadata=metadata, extra=extra,
                                     uploadId=newId, subject=subject)

        def unclaim(failure: Failure) -> "Deferred[Any]":
            # Not created after all (a full disk, a hook's refusal): it
            # must not count against the subject.
            d = self.disk.run(self.activeUploads.release, subject, newId)
            return d.addBoth(lambda _: failure)

        def created(ours: bool) -> "Deferred[UploadRecord]":
            # A marker another creation of this very upload made is not ours
            # to release if ours fails (it lost a race to create it).
            d = create()
            return d.addErrback(unclaim) if ours else d

        claimed = self.disk.run(self.activeUploads.claim, subject, newId, limit)
        return claimed.addCallback(created)

    def discard(self, record: UploadRecord) -> "Deferred[None]":
        """
        Remove every trace of an upload its creating request refused (no
        client was told its id, so no tombstone is owed), and stop counting
        it against its subject's limit.  In the disk pool.
        """
        def discardNow() -> None:
            self.store.discard(record.id)
            if record.subject is not None:
                self.activeUploads.release(record.subject, record.id)

        return self.disk.run(discardNow)

    def terminate(self, uploadId: str, protocol: Union[str, FrozenSet[str]],
                  principal: Principal = ANONYMOUS) -> "Deferred[bool]":
        """
        Delete an upload's data and leave a tombstone (later requests learn
        it is gone).  The lock is taken at once; the deletion, which waits
        for the record lock and touches files, runs in the disk pool.

        @raise UploadLocked: a request is writing to it.
        """
        upload = self.open(uploadId, protocol, principal)
        d = self.disk.run(self.store.terminate, uploadId)
        return d.addBoth(releasing, upload)

    # -- what a finished upload is ----------------------------------------------

    def sha256Of(self, record: UploadRecord) -> "Deferred[str]":
        """
        The sha256 of a complete upload, as chunkd records it: its
        publication's, or -- for an upload that stays where it was written
        (tus) -- its record's, hashed from its file in the disk pool the
        first time anyone asks and recorded then (without counting as
        activity).  A complete upload's bytes never change again, so every
        process that hashes it gets the same digest; the first to record it
        wins and the others answer what it recorded.

        @raise Conflict: the upload is not complete.
        """
        if record.published is not None:
            return succeed(record.published.sha256)
        if record.sha256 is not None:
            return succeed(record.sha256)
        length = record.length
        if record.state != COMPLETE or length is None:
            raise Conflict("the upload is not finished")
        uploadId = record.id
        return self._hashing.run(uploadId, lambda: Deferred.fromCoroutine(self._recordSha256(uploadId, length)))

    async def _recordSha256(self, uploadId: str, length: int) -> str:
        try:
            digest = await self.disk.run(sha256OfFile, self.store.dataPath(uploadId), length)
        except FileNotFoundError:
            # Terminated since it was read (UploadGone says so), or its file
            # was removed behind chunkd's back.
            self.store.live(self.store.get(uploadId))
            raise dataGone() from None
        except OSError as e:
            raise diskError(e, "hashing the upload") from None

        def remember(record: UploadRecord) -> Optional[bool]:
            if (record.sha256 is not None or record.published is not None
                    or record.state != COMPLETE or record.length != length):
                return False  # recorded meanwhile, or no longer these bytes
            record.sha256 = digest
            return None

        try:
            record = await self.store.update(uploadId, remember, touch=False)
        except OSError as e:
            raise diskError(e, "recording the upload") from None
        if record.sha256 is not None:
            return record.sha256
        if record.published is not None:
            return record.published.sha256
        self.store.live(record)  # terminated meanwhile: UploadGone
        raise Conflict("the upload is not finished")

    # -- record updates protocols share ------------------------------------------

    def refreshExpiry(self, record: UploadRecord) -> None:
        """
        A mutation: the idle clock starts again (an active upload only).
        Also revives one whose expiry passed before the janitor took it:
        a write arriving proves its client is still there.
        """
        expireAfter = self.config.janitor.expire_after
        if record.state == ACTIVE and expireAfter:
            record.expires = self.store.clock() + expireAfter

    def advanceTo(self, newOffset: int, length: Optional[int], completes: bool = True,
                  since: Optional[int] = None) -> Mutation:
        """
        The mutation that records a sequential upload's new offset.

        @param completes: reaching C{length} completes the upload (tus); the
            facade's uploads complete only when they are published.
        @param since: where the write began.  Under the upload's lock the
            record can only stand between there and C{newOffset} (our own
            checkpoints move it); anywhere else means the lock was lost --
            a shared file system cut this host off, and another took the
            upload over -- and these bytes must not count: L{OffsetMismatch}
            with the offset as it is, so the client resumes from there.
        """
        def advance(record: UploadRecord) -> None:
            # Our own checkpoint may have recorded the last byte already,
            # and with it completed the upload: that is still ours.
            ours = record.state == ACTIVE or (record.state == COMPLETE and record.offset == newOffset)
            if since is not None and not (ours and since <= record.offset <= newOffset):
                raise OffsetMismatch(
                    f"the upload moved on to {record.offset} while this write ran; resume from there",
                    headers={"Upload-Offset": str(record.offset)},
                )
            record.offset = newOffset
            record.length = length
            if completes and length is not None and newOffset == length:
                record.state = COMPLETE
                record.expires = None
            else:
                self.refreshExpiry(record)

        return advance

    @staticmethod
    def checkOffset(record: UploadRecord, offset: int) -> None:
        """
        @raise OffsetMismatch: C{offset} is not where the upload stands;
            the answer carries the current offset.
        """
        if offset != record.offset:
            raise OffsetMismatch(
                f"Upload-Offset is {offset} but the upload is at {record.offset}",
                headers={"Upload-Offset": str(record.offset)},
            )

    def commit(self, upload: OpenUpload, mutate: Mutation) -> "Deferred[UploadRecord]":
        """
        Record C{mutate} once the bytes written through C{upload} are
        durable, then release the upload either way.
        """
        d = self.store.commit(upload, mutate)
        d.addErrback(_asUploadError, "recording the upload")
        return d.addBoth(releasing, upload)

    # -- the write pipeline ---------------------------------------------------------

    def write(self, upload: OpenUpload, plan: WritePlan, producer: Optional[IPushProducer],
              bodyLength: Optional[int], request: Any = None) -> FileSink:
        """
        The sink that streams one body into C{upload} (which the caller
        opened and this now owns: it is released when the body is dealt
        with, however that goes).  Its result is the updated record, or an
        L{UploadError}.

        @param producer: the transport to pause while the disk lags.
        @param bodyLength: the body's declared length, if any.
        @param request: the request whose body this is, for the operator's
            live view (L{live}: its client, asked only when looked at).
        """
        try:
            if plan.limit is not None and bodyLength is not None and bodyLength > plan.limit:
                raise plan.overflow
            digests: List[Any] = []
            running = self.hashes.resume(upload.record.id, plan.offset) if plan.runningHash else None
            for digest in (running, plan.checksum.digest if plan.checksum else None):
                if digest is not None:
                    digests.append(digest)
            writer = self.disk.writer(
                upload.fd, plan.offset, self.config.disk.high_water, self.config.disk.low_water,
                producer=producer, digests=digests,
            )
            checkpoints: Optional[OffsetCheckpoints] = None
            every = self.config.storage.checkpoint_every
            if plan.checkpoints and every and bodyLength is not None and plan.checksum is None:
                progress = plan.progress
                checkpoints = OffsetCheckpoints(
                    lambda written: self.store.commit(upload, plan.recorded(plan.offset + written)), every,
                    bodyLength, None if progress is None else lambda written: progress(plan.offset + written))
                writer.progress = checkpoints.written
        except BaseException:
            upload.close()
            raise

        streaming: List[Streaming] = []

        def finish(outcome: BodyOutcome) -> "Deferred[UploadRecord]":
            # The last checkpoint, if one is under way, settles first: offsets
            # are recorded in order, and the upload stays open until then.
            settled = checkpoints.settled() if checkpoints is not None else succeed(None)
            d = settled.addCallback(lambda _: Deferred.fromCoroutine(
                self._record(upload, plan, outcome, running)))
            d.addBoth(releasing, upload)
            if streaming and self.live is not None:
                d.addBoth(_unregister, self.live, streaming[0], outcome)
            return d

        sink = FileSink(writer, plan.limit, finish)
        if self.live is not None:
            streaming.append(self.live.started(upload.record, plan.offset, sink, request))
        return sink

    async def _record(self, upload: OpenUpload, plan: WritePlan, outcome: BodyOutcome,
                      running: Any) -> UploadRecord:
        """
        Decide what a body that ended brought, and record it: nothing on
        an overflow or a failed check; else every byte that landed (the
        policy for cut-off bodies is the protocol's C{verify}).  A body the
        disk stopped is answered by L{_recordStopped}.
        """
        if outcome.error is not None:
            return await self._recordStopped(upload, plan, outcome, running)
        if outcome.overflow:
            raise plan.overflow
        await self._judge(plan, outcome)
        return await self._commitLanded(upload, plan, outcome, running)

    async def _judge(self, plan: WritePlan, outcome: BodyOutcome) -> None:
        """
        The protocol's C{verify} and any checksum judge what the body brought.

        @raise UploadError: the body is refused; nothing is to be recorded.
        """
        if plan.verify is not None:
            checked = plan.verify(outcome)
            if checked is not None:
                await checked
        if plan.checksum is not None:
            plan.checksum.verify(outcome)

    async def _commitLanded(self, upload: OpenUpload, plan: WritePlan, outcome: BodyOutcome,
                            running: Any) -> UploadRecord:
        """
        Record the bytes that landed (durable first, by the commit), and
        move the running hash on.
        """
        newEnd = plan.offset + outcome.written
        try:
            record = await self.store.commit(upload, plan.recorded(newEnd))
        except OSError as e:
            raise diskError(e, "recording the upload") from None
        if running is not None:
            self.hashes.advance(record.id, running, newEnd)
        return record

    async def _recordStopped(self, upload: OpenUpload, plan: WritePlan, outcome: BodyOutcome,
                             running: Any) -> UploadRecord:
        """
        A write failed; the answer is always the disk's error, for this
        request alone.

        A full disk or quota (507): what reached the file before it is as
        good as the bytes of a body cut off by its connection, so it is
        recorded (after C{fdatasync}, by the commit) on the same policy --
        the protocol's C{verify} and any checksum see a cut-off body, and a
        body that counts whole or not at all (a Resumable.js chunk, a
        checksummed PATCH) records nothing.  The client resumes from there
        once space is freed instead of sending it all again.

        Any other error (EIO, say): nothing is recorded; the device failed
        under these bytes, and the client sends them again.
        """
        error = outcome.error
        assert error is not None
        answer = diskError(error, "writing the upload")
        uploadId = upload.record.id
        if not (isinstance(error, OSError) and error.errno in NO_SPACE):
            self.log.error("writing upload {uploadId} failed: {error}", uploadId=uploadId, error=str(error))
            raise answer
        recorded = 0
        if outcome.written and not outcome.overflow:
            cut = replace(outcome, complete=False)
            try:
                await self._judge(plan, cut)
            except UploadError:
                pass  # whole or nothing: nothing
            else:
                await self._commitLanded(upload, plan, cut, running)
                recorded = outcome.written
        self.log.warn("upload {uploadId}: {reason} after {written} bytes of the body; {recorded} recorded",
                      uploadId=uploadId, reason=answer.reason, written=outcome.written, recorded=recorded)
        raise answer


class OffsetCheckpoints:
    """
    Records a long body's offset while it still streams, every C{every}
    bytes that reached the file, so a crash in the middle of a
    multi-gigabyte body loses at most that much of it.  One checkpoint at
    a time: one that comes due while another is under way waits for the
    next batch.  The body's last bytes are never a checkpoint's: the
    body's own record takes them (a checkpoint there could complete the
    upload, and the body's record would find it moved on).
    """

    log = Logger()

    def __init__(self, commit: Callable[[int], "Deferred[Any]"], every: int, bodyLength: int,
                 recorded: Optional[Callable[[int], None]] = None) -> None:
        self.commit = commit
        self.every = every
        self.bodyLength = bodyLength
        self.onRecorded = recorded
        self.recorded = 0
        self.running: Optional[Deferred[Any]] = None
        self._settled: Optional[OneShotResult[None]] = None

    def written(self, written: int) -> None:
        if self.running is not None or written - self.recorded < self.every or written >= self.bodyLength:
            return
        self.recorded = written
        self.running = self.commit(written)
        self.running.addBoth(self._done, written)

    def _done(self, result: Any, written: int) -> None:
        self.running = None
        if isinstance(result, Failure):
            # The body's final record still comes; this one only hurried it.
            if result.check(OSError, UploadError):
                self.log.warn("recording a checkpoint failed: {error}", error=str(result.value))
            else:
                self.log.failure("recording a checkpoint", result)
        elif self.onRecorded is not None:
            try:
                self.onRecorded(written)
            except Exception:
                self.log.failure("reporting a checkpoint")
        settled, self._settled = self._settled, None
        if settled is not None:
            settled.fire(None)

    def settled(self) -> "Deferred[None]":
        if self.running is None:
            return succeed(None)
        if self._settled is None:
            self._settled = OneShotResult()
        return self._settled.whenFired()


def _unregister(result: Any, live: LiveUploads, entry: Streaming, outcome: BodyOutcome) -> Any:
    """A callback: the body is over; tell the live view how it went."""
    error = None
    if isinstance(result, Failure):
        value = result.value
        error = value.reason if isinstance(value, UploadError) else result.getErrorMessage()
    elif not outcome.complete:
        error = f"cut off after {outcome.written} bytes"
    live.ended(entry, error)
    return result


def releasing(result: Any, upload: OpenUpload) -> Any:
    """A callback and errback: let go of the upload, pass the result on."""
    upload.close()
    return result


def _asUploadError(failure: Failure, doing: str) -> Failure:
    if isinstance(failure.value, OSError):
        return Failure(diskError(failure.value, doing))
    return failure
