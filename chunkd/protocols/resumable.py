"""
Resumable.js and flow.js: the chunk protocol both clients speak, in one file.

A client cuts a file of C{S} bytes into chunks of C{C} bytes and sends each
as its own request, several at once, in any order, perhaps twice; a GET with
the same parameters first asks whether a chunk is already stored.  chunkd
keeps I{one} preallocated file per upload and writes each chunk straight
into it at C{(n - 1) * C} as it streams in, so there are no chunk files and
there is no reassembly step.  A bitmap in the upload's record says which
chunks are durable; the upload is complete when its last missing chunk is.

The two dialects differ only in their parameter names (C{resumable*} and
C{flow*}, the latter without C{Type}) and in where the parameters arrive:
Resumable.js repeats them in the query string of a multipart request,
flow.js sends them only as form fields before the file part.  L{Dialect}
holds the difference; L{ChunkProtocol} is mounted once per dialect.

Like tus, requests with a body are decided by their route's body factory
(L{ChunkProtocol.chunkSink}) when their headers end, and written through the
upload layer; the routes only format what was recorded.

Identity: an upload's id is a hash of the dialect and the client's
identifier, so every chunk of a file finds the same upload without any
client text becoming a path; the file name and relative path are kept as
metadata (raw for display, sanitized for use).

Completion happens exactly once per upload: whoever records the last chunk
takes the upload's exclusive lock (which waits for every chunk writer still
holding the shared one) and publishes it (L{chunkd.publish}) as
C{<upload id>} in the completed area.  The running sha256 takes in the run
of stored chunks at the front of the file while later chunks arrive, so
publishing hashes only what is left.  Later chunks and tests of a completed
upload are answered 200 without touching any file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from chunkd.auth import ANONYMOUS, Principal
from chunkd.complete import sanitizeFilename
from chunkd.config import Config
from chunkd.errors import (
    BadRequest,
    ServiceUnavailable,
    UploadGone,
    UploadLocked,
    UploadNotFound,
    diskError,
)
from chunkd.multipart import MultipartSink, boundaryOf
from chunkd.once import SharedWork
from chunkd.routes import Route
from chunkd.sinks import BodyOutcome, LateSink, MappedSink, RecordSink
from chunkd.store import EXPIRED, TERMINATED, OpenUpload, UploadRecord
from chunkd.streaming import BodySink, StreamingRequest
from chunkd.uploads import UploadService, WritePlan
from chunkd.web import header, setHeader

_DIGITS = re.compile(r"^[0-9]{1,19}\Z")
#: the longest identifier, file name, relative path or type accepted, in
#: characters: far beyond any real file system, short enough to keep
#: records and request lines small.
MAX_TEXT = 4096


# -- the two dialects ---------------------------------------------------------


@dataclass(frozen=True)
class Dialect:
    """
    What differs between Resumable.js and flow.js: the parameter prefix and
    whether a C{Type} parameter exists.  C{name} is also the upload
    records' protocol and part of every upload id.
    """

    name: str
    prefix: str
    hasType: bool

    def param(self, suffix: str) -> str:
        return self.prefix + suffix


RESUMABLE = Dialect("resumable", "resumable", hasType=True)
FLOW = Dialect("flow", "flow", hasType=False)


# -- chunk geometry -------------------------------------------------------------


def chunkCounts(totalSize: int, chunkSize: int) -> Tuple[int, int]:
    """
    The chunk counts a client may use for a file: C{max(floor(S/C), 1)}
    (both clients' default, the last chunk absorbing the remainder) and
    C{max(ceil(S/C), 1)} (with C{forceChunkSize: true}).
    """
    return max(totalSize // chunkSize, 1), max(-(-totalSize // chunkSize), 1)


def expectedChunkSize(totalSize: int, chunkSize: int, totalChunks: int, number: int) -> int:
    """
    The size of chunk C{number} (1-based): C{C} for every chunk but the last,
    which is C{S - (N - 1) * C} -- between C{C} and C{2C - 1} in the default
    mode, at most C{C} with C{forceChunkSize}, C{S} when the file is smaller
    than one chunk and 0 for an empty file.
    """
    if number < totalChunks:
        return chunkSize
    return totalSize - (totalChunks - 1) * chunkSize


@dataclass(frozen=True)
class ChunkRequest:
    """
    One chunk as a client described it, already checked against the
    protocol's rules (but not yet against the upload's first chunk).
    """

    dialect: Dialect
    number: int
    chunkSize: int
    currentSize: int
    totalSize: int
    totalChunks: int
    identifier: str
    filename: str
    relativePath: str
    type: str
    principal: Principal = ANONYMOUS

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.chunkSize

    @property
    def uploadId(self) -> str:
        return uploadIdFor(self.dialect, self.identifier, self.principal.subject)


def uploadIdFor(dialect: Dialect, identifier: str, subject: Optional[str] = None) -> str:
    """
    The storage id of a client's file: a hash of the dialect, the
    identifier and the subject, 32 hex digits like every store id.  The
    same identifier always finds the same upload -- of the same subject:
    two users' identical identifiers (Resumable.js derives them from size
    and name) are two uploads.  No client text ever becomes a path.
    """
    scope = b"" if subject is None else b"\0subject\0" + subject.encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(b"chunkd-chunk-upload\0" + dialect.name.encode() + b"\0"
                            + identifier.encode("utf-8", "surrogatepass") + scope)
    return digest.hexdigest()[:32]


def _number(params: Mapping[str, str], name: str, minimum: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        raise BadRequest(f"{name} is required")
    if not _DIGITS.match(value):
        raise BadRequest(f"{name} must be a whole number, got {value[:40]!r}")
    number = int(value)
    if number < minimum:
        raise BadRequest(f"{name} must be at least {minimum}")
    return number


def _text(params: Mapping[str, str], name: str, required: bool, default: str = "") -> str:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise BadRequest(f"{name} is required")
        return default
    if len(value) > MAX_TEXT:
        raise BadRequest(f"{name} is longer than {MAX_TEXT} characters")
    if "\0" in value:
        raise BadRequest(f"{name} contains a NUL character")
    return value


def parseChunk(
    dialect: Dialect, params: Mapping[str, str], maxSize: int, maxChunks: int,
    principal: Principal = ANONYMOUS,
) -> ChunkRequest:
    """
    Read and check a chunk's parameters: every number present and a plain
    non-negative integer, the chunk count one of the two a client can
    compute, the chunk number within it, the current chunk's size the one
    its number implies, the file within the limits.

    @param maxSize: the largest file accepted (0: no limit).
    @param principal: who sends it (their uploads are theirs alone).
    @raise BadRequest: naming the parameter, for anything wrong.  Too large
        a file is a 400 too (over C{limits.max_size} or the token's
        C{max_size}): Resumable.js retries a 413 (it is not among its
        permanent errors), and this chunk can never succeed.
    """
    p = dialect.param
    number = _number(params, p("ChunkNumber"), 1)
    chunkSize = _number(params, p("ChunkSize"), 1)
    currentSize = _number(params, p("CurrentChunkSize"), 0)
    totalSize = _number(params, p("TotalSize"), 0)
    totalChunks = _number(params, p("TotalChunks"), 1)
    identifier = _text(params, p("Identifier"), required=True)
    filename = _text(params, p("Filename"), required=True)
    relativePath = _text(params, p("RelativePath"), required=False, default=filename)
    type = _text(params, p("Type"), required=False) if dialect.hasType else ""
    if maxSize and totalSize > maxSize:
        raise BadRequest(f"the file is larger than the limit of {maxSize} bytes")
    if totalChunks > maxChunks:
        raise BadRequest(f"{p('TotalChunks')} exceeds the limit of {maxChunks} chunks")
    if totalChunks not in chunkCounts(totalSize, chunkSize):
        floor, ceil = chunkCounts(totalSize, chunkSize)
        expected = str(floor) if floor == ceil else f"{floor} or {ceil}"
        raise BadRequest(
            f"{p('TotalChunks')} is {totalChunks}, but {totalSize} bytes in chunks of "
            f"{chunkSize} make {expected}"
        )
    if number > totalChunks:
        raise BadRequest(f"{p('ChunkNumber')} {number} is past the last chunk ({totalChunks})")
    size = expectedChunkSize(totalSize, chunkSize, totalChunks, number)
    if currentSize != size:
        raise BadRequest(
            f"{p('CurrentChunkSize')} is {currentSize}, but chunk {number} of this file "
            f"is {size} bytes"
        )
    return ChunkRequest(dialect, number, chunkSize, currentSize, totalSize, totalChunks,
                        identifier, filename, relativePath, type, principal)


def mergeParams(*sources: Iterable[Tuple[str, str]]) -> Dict[str, str]:
    """
    One parameter mapping from the query string and the form fields
    (Resumable.js sends its parameters in both).  A parameter may repeat
    with the same value; two different values are refused, since either
    could be the one the client meant.
    """
    merged: Dict[str, str] = {}
    for source in sources:
        for name, value in source:
            if merged.get(name, value) != value:
                raise BadRequest(f"{name} is given twice with different values")
            merged[name] = value
    return merged


def queryParams(uri: bytes) -> List[Tuple[str, str]]:
    """
    The query string's parameters, percent-decoded to bytes and then read
    as UTF-8 (what C{encodeURIComponent} produces).

    @raise BadRequest: a parameter is not UTF-8.
    """
    pairs = []
    for piece in uri.partition(b"?")[2].split(b"&"):
        if not piece:
            continue
        name, _, value = piece.replace(b"+", b" ").partition(b"=")
        try:
            pairs.append((unquote_to_bytes(name).decode("utf-8"), unquote_to_bytes(value).decode("utf-8")))
        except UnicodeDecodeError:
            raise BadRequest("query parameters must be UTF-8") from None
    return pairs


def sanitizeRelativePath(path: str, fallback: str) -> str:
    """
    A relative path safe to recreate under a directory of the
    application's choosing: each component sanitized like a file name,
    with empty, C{.} and C{..} components dropped, so it can neither climb
    out nor start at the root.
    """
    parts = []
    for component in path.replace("\\", "/").split("/"):
        if component in ("", ".", ".."):
            continue
        safe = sanitizeFilename(component, "")
        if safe:
            parts.append(safe)
    return "/".join(parts) or fallback


# -- the chunk map --------------------------------------------------------------


def storedEnd(record: UploadRecord, start: int = 0) -> int:
    """
    Where the run of stored chunks at the front of the file ends: the
    bytes the running hash may take in now.  C{start}, a chunk boundary
    known to lie inside that run (where the running hash stands), spares
    looking at the chunks before it again on every chunk.
    """
    chunks = ChunkMap.of(record)
    size = record.extra["chunkSize"]
    number = start // size + 1
    while number <= chunks.count and chunks.has(number):
        number += 1
    if number > chunks.count:
        return int(record.extra["totalSize"])
    return (number - 1) * size


class ChunkMap:
    """
    Which chunks of an upload are durably stored: one bit per chunk, kept
    base64-encoded in the record's C{extra["chunkMap"]}.
    """

    def __init__(self, count: int, bits: Optional[bytes] = None) -> None:
        self.count = count
        self.bits = bytearray(bits if bits is not None else (count + 7) // 8)

    @classmethod
    def of(cls, record: UploadRecord) -> "ChunkMap":
        return cls(record.extra["totalChunks"], base64.b64decode(record.extra["chunkMap"]))

    def encode(self) -> str:
        return base64.b64encode(bytes(self.bits)).decode("ascii")

    def has(self, number: int) -> bool:
        index = number - 1
        return bool(self.bits[index // 8] & (1 << (index % 8)))

    def add(self, number: int) -> None:
        index = number - 1
        self.bits[index // 8] |= 1 << (index % 8)

    def stored(self) -> int:
        return int.from_bytes(self.bits, "little").bit_count()

    @property
    def full(self) -> bool:
        return self.stored() == self.count


@dataclass
class ChunkAnswer:
    """
    What a chunk request (or a test that hit) reports: the upload and
    whether it is now complete.
    """

    uploadId: str
    chunk: int
    complete: bool

    def toJSON(self) -> bytes:
        return json.dumps(
            {"uploadId": self.uploadId, "chunk": self.chunk, "complete": self.complete}
        ).encode("utf-8")


# -- the protocol -------------------------------------------------------------------


class ChunkProtocol:
    """
    The chunk protocol in one dialect, at that dialect's configured path.

    @ivar lockPoll: seconds between attempts to take an upload's exclusive
        lock for completion while chunk writers still hold it shared.
    @ivar lockWait: how long completion waits for them before answering 503.
    @ivar creationWait: how long to wait for another process's half-made
        upload record before treating its data file as an orphan.
    """

    log = Logger()
    exposedHeaders: List[str] = []
    lockPoll = 0.02
    lockWait = 120.0
    creationWait = 10.0

    def __init__(self, config: Config, uploads: UploadService, dialect: Dialect) -> None:
        self.config = config
        self.uploads = uploads
        self.store = uploads.store
        self.disk = uploads.disk
        self.publisher = uploads.publisher
        self.dialect = dialect
        self.name = dialect.name
        # The mount is fixed once routes are installed; every other setting
        # is read from self.config per request, so a reloaded config applies.
        self.mount: str = getattr(config, dialect.name).path
        self._creating: SharedWork[UploadRecord] = SharedWork()
        self._finishing: SharedWork[UploadRecord] = SharedWork()

    def reconfigure(self, config: Config) -> None:
        self.config = config

    # -- wiring --------------------------------------------------------------

    def routes(self) -> Sequence[Route]:
        routes: List[Route] = []
        for path in (self.mount, self.mount + "/"):
            routes.append(Route(path, ("GET",), self.testChunk))
            routes.append(Route(path, ("POST", "PUT"), self.chunkStored, body=self.chunkSink))
            routes.append(Route(path, ("OPTIONS",), self.options))
        return routes

    def _section(self) -> Any:
        return getattr(self.config, self.dialect.name)

    def _parse(self, request: Any, params: Mapping[str, str]) -> ChunkRequest:
        principal = request.principal
        chunk = parseChunk(self.dialect, params, self.uploads.maxSizeFor(principal),
                           self._section().max_chunks, principal)
        principal.checkUpload(chunk.uploadId)
        return chunk

    # -- chunk uploads: decided when the headers end --------------------------------

    def chunkSink(self, request: StreamingRequest) -> Optional[BodySink]:
        """
        Choose where a chunk's body goes (its route calls this at the end
        of the headers).  A C{multipart/form-data} body carries the
        chunk in its file part, whose parameters are known once the fields
        before it are; any other body is the chunk itself (C{octet} mode),
        with the parameters in the query string.
        """
        query = queryParams(request.uri)
        contentType = header(request, "content-type")
        if (contentType or "").split(";")[0].strip().lower() == "multipart/form-data":
            boundary = boundaryOf(contentType)

            def openFile(fields: Dict[str, str]) -> BodySink:
                return self._chunkSink(request, self._parse(request, mergeParams(query, fields.items())))

            return MultipartSink(boundary, self._section().file_field, openFile)
        chunk = self._parse(request, mergeParams(query))
        if request.bodyLength is not None and request.bodyLength != chunk.currentSize:
            raise BadRequest(
                f"the body is {request.bodyLength} bytes but "
                f"{self.dialect.param('CurrentChunkSize')} is {chunk.currentSize}"
            )
        return self._chunkSink(request, chunk)

    def _chunkSink(self, request: StreamingRequest, chunk: ChunkRequest) -> BodySink:
        """
        The sink for one chunk's bytes.  Finding (or creating) the upload
        may have to wait for the disk pool; meanwhile the socket is paused
        (L{LateSink}).
        """
        decided = Deferred.fromCoroutine(self._decide(request, chunk))
        return LateSink(decided, request.bodyProducer)

    async def _decide(self, request: StreamingRequest, chunk: ChunkRequest) -> BodySink:
        """
        Where this chunk goes: nowhere if it is already stored (a repeat, or
        a late chunk of a completed upload), else into the upload's file at
        its offset, alongside any other chunks being written.
        """
        for _ in range(3):
            record = self._lookup(chunk.uploadId)
            if record is None:
                record = await self._create(chunk)
            self._checkAgrees(record, chunk)
            if record.published is not None:
                return RecordSink(ChunkAnswer(record.id, chunk.number, True))
            chunks = ChunkMap.of(record)
            if chunks.has(chunk.number):
                complete = False
                if chunks.full:
                    await self._finish(record.id)
                    complete = True
                return RecordSink(ChunkAnswer(record.id, chunk.number, complete))
            if record.expires is not None and record.expires <= self.store.clock():
                await self.store.update(record.id, self.uploads.refreshExpiry)
            try:
                upload = self.store.openShared(record.id)
            except UploadLocked:
                # Held exclusively: completion (then the chunk is stored and
                # the next look says so) or a termination.
                await deferLater(self.disk.reactor, self.lockPoll, lambda: None)
                continue
            except (UploadGone, UploadNotFound):
                continue  # terminated or published meanwhile: look again
            return self._chunkWriter(request, upload, chunk)
        raise ServiceUnavailable("the upload is busy; try again")

    def _chunkWriter(self, request: StreamingRequest, upload: OpenUpload, chunk: ChunkRequest) -> BodySink:
        """
        The chunk's bytes, through the upload layer, at the chunk's offset;
        recorded only if every byte of it arrived.  Then complete the
        upload if this was its last missing chunk.
        """
        number = chunk.number

        def recorded(end: int) -> Callable[[UploadRecord], None]:
            def markStored(record: UploadRecord) -> None:
                chunks = ChunkMap.of(record)
                chunks.add(number)
                record.extra["chunkMap"] = chunks.encode()
                self.uploads.refreshExpiry(record)

            return markStored

        plan = WritePlan(
            chunk.offset, chunk.currentSize, recorded,
            overflow=BadRequest(f"the chunk is longer than its {chunk.currentSize} bytes"),
            verify=lambda outcome: _checkWhole(outcome, chunk),
        )
        # The body may be multipart, larger than its chunk: the chunk's own
        # size was checked against an octet body's length already.
        sink = self.uploads.write(upload, plan, request.bodyProducer, None, request)
        return MappedSink(sink, lambda record: Deferred.fromCoroutine(self._afterChunk(record, chunk)))

    async def _afterChunk(self, record: UploadRecord, chunk: ChunkRequest) -> ChunkAnswer:
        # The shared lock is released by now: completion takes the
        # exclusive one.
        if ChunkMap.of(record).full and record.published is None:
            await self._finish(record.id)
            return ChunkAnswer(record.id, chunk.number, True)
        hashes = self.uploads.hashes
        end = storedEnd(record, hashes.covered(record.id))
        hashes.catchUp(record.id, self.store.dataPath(record.id), end)
        return ChunkAnswer(record.id, chunk.number, record.published is not None)

    # -- finding and creating uploads -------------------------------------------------

    def _lookup(self, uploadId: str) -> Optional[UploadRecord]:
        """
        The upload's record, or C{None} when there is none to continue: no
        record, or the tombstone of an upload whose data is gone (a later
        upload of the same file starts afresh).  A completed upload stays
        findable even after a restart has marked its moved data missing.
        """
        try:
            record = self.store.get(uploadId)
        except UploadNotFound:
            return None
        if record.state in (TERMINATED, EXPIRED) and record.published is None:
            return None
        return record

    def _create(self, chunk: ChunkRequest) -> Deferred[UploadRecord]:
        """
        Create the upload for a file's first chunk -- or wait for the request
        already creating it: the first chunks often arrive together.
        """
        return self._creating.run(chunk.uploadId, lambda: Deferred.fromCoroutine(self._createNow(chunk)))

    async def _createNow(self, chunk: ChunkRequest) -> UploadRecord:
        try:
            # An empty file gets its length only when it is published: the
            # store would otherwise call a 0-byte upload complete (and tell
            # its listeners) before its file reached the completed area.
            record = await self.uploads.create(
                self.dialect.name,
                chunk.totalSize or None,
                metadata=_metadataOf(chunk),
                extra={
                    "totalSize": chunk.totalSize,
                    "identifier": chunk.identifier,
                    "filename": chunk.filename,
                    "relativePath": chunk.relativePath,
                    "type": chunk.type,
                    "chunkSize": chunk.chunkSize,
                    "totalChunks": chunk.totalChunks,
                    "chunkMap": ChunkMap(chunk.totalChunks).encode(),
                },
                uploadId=chunk.uploadId,
                principal=chunk.principal,
            )
        except FileExistsError:
            # Another process created the data file first (O_EXCL); its
            # record follows as soon as the space is allocated.
            return await self._awaitRecord(chunk)
        except OSError as e:
            raise diskError(e, "creating the upload") from None
        self.log.info(
            "{protocol} upload {uploadId} created: {size} bytes in {chunks} chunks",
            protocol=self.dialect.name, uploadId=record.id, size=chunk.totalSize,
            chunks=chunk.totalChunks,
        )
        return record

    async def _awaitRecord(self, chunk: ChunkRequest) -> UploadRecord:
        waited = 0.0
        while waited < self.creationWait:
            record = self._lookup(chunk.uploadId)
            if record is not None:
                return record
            await deferLater(self.disk.reactor, 0.05, lambda: None)
            waited += 0.05
        # A data file without a record this long is what a crash between the
        # two leaves behind: nothing refers to it, so start over.
        self.log.warn("removing orphaned data file of upload {uploadId}", uploadId=chunk.uploadId)
        try:
            os.unlink(self.store.dataPath(chunk.uploadId))
        except FileNotFoundError:
            pass
        raise ServiceUnavailable("the upload is being created; try again")

    def _checkAgrees(self, record: UploadRecord, chunk: ChunkRequest) -> None:
        """
        A chunk must describe the same file as the upload's first chunk did.

        @raise BadRequest: naming what differs.
        """
        extra = record.extra
        p = self.dialect.param
        if (record.protocol != self.dialect.name or extra.get("identifier") != chunk.identifier
                or record.subject != chunk.principal.subject):
            raise BadRequest("this identifier belongs to another upload")
        for name, recorded, sent in (
            (p("TotalSize"), extra.get("totalSize"), chunk.totalSize),
            (p("ChunkSize"), extra.get("chunkSize"), chunk.chunkSize),
            (p("TotalChunks"), extra.get("totalChunks"), chunk.totalChunks),
            (p("Filename"), extra.get("filename"), chunk.filename),
        ):
            if recorded != sent:
                raise BadRequest(f"{name} differs from this upload's first chunk")

    # -- completion --------------------------------------------------------------------

    def _finish(self, uploadId: str) -> Deferred[UploadRecord]:
        """
        Complete an upload whose every chunk is stored -- once, however many
        requests notice at the same time.
        """
        return self._finishing.run(uploadId, lambda: Deferred.fromCoroutine(self._finishNow(uploadId)))

    async def _finishNow(self, uploadId: str) -> UploadRecord:
        try:
            upload = await self._lockExclusive(uploadId)
        except UploadGone:
            # The data file has left: published by another process, or by
            # a run cut short before its record said so.
            return await self.publisher.adopt(self.store.get(uploadId))
        try:
            # Re-read under the lock: another process may have finished it.
            record = self.store.get(uploadId)
            if record.published is not None or not ChunkMap.of(record).full:
                return record
            extra = record.extra
            filename = sanitizeFilename(extra["filename"], record.id)
            return await self.publisher.publish(
                upload, record.id, extra["totalSize"], extra["filename"],
                {
                    "identifier": extra["identifier"],
                    "filename": filename,
                    "relativePath": sanitizeRelativePath(extra["relativePath"], filename),
                    "clientRelativePath": extra["relativePath"],
                    "type": extra.get("type") or None,
                },
            )
        finally:
            upload.close()

    async def _lockExclusive(self, uploadId: str) -> OpenUpload:
        """
        The upload's exclusive lock, waiting for chunk writers (repeats of
        stored chunks) that still hold it shared.
        """
        waited = 0.0
        while True:
            try:
                return self.store.open(uploadId)
            except UploadLocked:
                if waited >= self.lockWait:
                    raise ServiceUnavailable("the upload is busy completing; try again") from None
            await deferLater(self.disk.reactor, self.lockPoll, lambda: None)
            waited += self.lockPoll

    # -- routes ----------------------------------------------------------------------------

    async def testChunk(self, request: Any) -> bytes:
        """
        GET: is this chunk stored in full?  200 if so, 204 if not -- never
        404, which flow.js takes as fatal for the whole file.
        """
        chunk = self._parse(request, mergeParams(queryParams(request.uri)))
        setHeader(request, "Cache-Control", "no-store")
        record = self._lookup(chunk.uploadId)
        if record is not None:
            self._checkAgrees(record, chunk)
            complete = record.published is not None
            chunks = ChunkMap.of(record)
            if complete or chunks.has(chunk.number):
                if not complete and chunks.full:
                    # A completion that failed earlier is retried here.
                    await self._finish(record.id)
                    complete = True
                return self._answer(request, ChunkAnswer(record.id, chunk.number, complete))
        request.setResponseCode(204)
        return b""

    async def chunkStored(self, request: Any) -> bytes:
        """
        POST or PUT of a chunk: 200 once it is durable (Resumable.js takes
        only 200 and 201 as success).
        """
        answer: ChunkAnswer = await request.bodySink.result()
        return self._answer(request, answer)

    def _answer(self, request: Any, answer: ChunkAnswer) -> bytes:
        request.setResponseCode(200)
        setHeader(request, "Content-Type", "application/json")
        return answer.toJSON()

    def options(self, request: Any) -> bytes:
        # CORS preflight of octet-mode or PUT uploads; headers from Cors.
        request.setResponseCode(200)
        return b""


# -- helpers ------------------------------------------------------------------------------


def _checkWhole(outcome: BodyOutcome, chunk: ChunkRequest) -> None:
    """
    A chunk counts only if its whole body, and nothing more, reached the
    file (the upload layer has refused disk errors and overflows).
    """
    if not outcome.complete:
        raise BadRequest("the chunk was cut off")
    if outcome.written != chunk.currentSize:
        raise BadRequest(
            f"the chunk brought {outcome.written} bytes, not its {chunk.currentSize}"
        )


def _metadataOf(chunk: ChunkRequest) -> Dict[str, Optional[str]]:
    """
    The record's metadata (for hooks and applications): sanitized names
    only, never text that could act as a path.
    """
    filename = sanitizeFilename(chunk.filename, chunk.uploadId)
    return {
        "filename": filename,
        "relativePath": sanitizeRelativePath(chunk.relativePath, filename),
        "filetype": chunk.type or None,
    }


def chunkProtocols(config: Config, uploads: UploadService) -> List[ChunkProtocol]:
    """
    The enabled dialects, ready to install.
    """
    return [
        ChunkProtocol(config, uploads, dialect)
        for dialect in (RESUMABLE, FLOW)
        if getattr(config, dialect.name).enabled
    ]
