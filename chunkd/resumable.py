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

Like L{chunkd.tus}, requests with a body are decided in
L{ChunkProtocol.bodySink} when their headers end, and the routes only format
what the sink recorded.

Identity: an upload's id is a hash of the dialect and the client's
identifier, so every chunk of a file finds the same upload without any
client text becoming a path; the file name and relative path are kept as
metadata (raw for display, sanitized for use).

Completion happens exactly once per upload: whoever records the last chunk
takes the upload's exclusive lock (which waits for every chunk writer still
holding the shared one), hashes the file in the disk pool, moves it into the
completed area as C{<upload id>} with a JSON sidecar, and marks the record.
Later chunks and tests of a completed upload are answered 200 without
touching any file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from chunkd.complete import CompletedFiles, sanitizeFilename
from chunkd.config import Config
from chunkd.disk import DiskService
from chunkd.errors import (
    dataGone,
    diskError,
    BadRequest,
    ServiceUnavailable,
    UploadError,
    UploadGone,
    UploadLocked,
    UploadNotFound,
)
from chunkd.once import SharedWork
from chunkd.multipart import MultipartSink, boundaryOf
from chunkd.sinks import BodyOutcome, FileSink, LateSink, RecordSink
from chunkd.store import ACTIVE, COMPLETE, EXPIRED, TERMINATED, OpenUpload, UploadRecord, UploadStore
from chunkd.streaming import BodyRouter, BodySink, StreamingRequest
from chunkd.web import header, setHeader

_DIGITS = re.compile(r"^[0-9]{1,19}$")
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

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.chunkSize

    @property
    def uploadId(self) -> str:
        return uploadIdFor(self.dialect, self.identifier)


def uploadIdFor(dialect: Dialect, identifier: str) -> str:
    """
    The storage id of a client's file: a hash of the dialect and the
    identifier, 32 hex digits like every store id.  The same identifier
    always finds the same upload; no client text ever becomes a path.
    """
    digest = hashlib.sha256(b"chunkd-chunk-upload\0" + dialect.name.encode() + b"\0"
                            + identifier.encode("utf-8", "surrogatepass"))
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
    dialect: Dialect, params: Mapping[str, str], maxSize: int, maxChunks: int
) -> ChunkRequest:
    """
    Read and check a chunk's parameters: every number present and a plain
    non-negative integer, the chunk count one of the two a client can
    compute, the chunk number within it, the current chunk's size the one
    its number implies, the file within the limits.

    @param maxSize: the largest file accepted (0: no limit).
    @raise BadRequest: naming the parameter, for anything wrong.  Too large
        a file is a 400 too: Resumable.js retries a 413 (it is not among its
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
    expected = expectedChunkSize(totalSize, chunkSize, totalChunks, number)
    if currentSize != expected:
        raise BadRequest(
            f"{p('CurrentChunkSize')} is {currentSize}, but chunk {number} of this file "
            f"is {expected} bytes"
        )
    return ChunkRequest(dialect, number, chunkSize, currentSize, totalSize, totalChunks,
                        identifier, filename, relativePath, type)


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


class PrefixHash:
    """
    The sha256 of an upload's leading stored chunks, advanced in the disk
    pool while later chunks still arrive, so completion hashes only what is
    left (usually nothing) instead of reading the whole file again before
    the last chunk's answer.  It lives in memory only: after a restart, or
    in another process, completion hashes from wherever it stands.

    @ivar offset: bytes from the start of the file already in C{digest}.
    @ivar running: the hashing job in flight, if any.
    """

    #: prefixes kept at most; the oldest (an abandoned upload) goes first
    limit = 10000

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.offset = 0
        self.running: Optional[Deferred[Any]] = None
        self.again = False

    @staticmethod
    def end(record: UploadRecord, start: int) -> int:
        """
        Where the run of stored chunks that includes byte C{start} ends.
        """
        chunks = ChunkMap.of(record)
        size = record.extra["chunkSize"]
        number = start // size + 1
        while number <= chunks.count and chunks.has(number):
            number += 1
        if number > chunks.count:
            return record.extra["totalSize"]
        return (number - 1) * size

    def hashRange(self, path: str, end: int) -> None:
        # Runs in the disk pool; one job per prefix at a time.
        with open(path, "rb", buffering=0) as f:
            f.seek(self.offset)
            _hashInto(f, self.digest, end - self.offset)


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

    def __init__(self, config: Config, store: UploadStore, disk: DiskService, dialect: Dialect) -> None:
        self.config = config
        self.store = store
        self.disk = disk
        self.dialect = dialect
        # The mount is fixed once routes are installed; every other setting
        # is read from self.config per request, so a reloaded config applies.
        self.mount: str = getattr(config, dialect.name).path
        #: the completed-files area, made when the first upload completes
        self.completedDirectory = os.path.abspath(
            config.complete.directory or os.path.join(config.storage.directory, "complete")
        )
        self._completed: Optional[CompletedFiles] = None
        self._creating: SharedWork[UploadRecord] = SharedWork()
        self._finishing: SharedWork[UploadRecord] = SharedWork()
        self._prefixes: Dict[str, PrefixHash] = {}

    # -- wiring --------------------------------------------------------------

    def install(self, app: Klein, router: BodyRouter) -> None:
        router.mount(self.mount, self.bodySink)
        # Klein names an endpoint after its function unless told otherwise,
        # and both dialects install the same methods: name them apart.
        routes = (("GET", self.testChunk), ("POST", self.chunkStored),
                  ("PUT", self.chunkStored), ("OPTIONS", self.options))
        for path in (self.mount, self.mount + "/"):
            for method, handler in routes:
                endpoint = f"{self.dialect.name}:{method}:{path}"
                app.route(path, methods=[method], endpoint=endpoint)(handler)

    def _isEndpoint(self, request: StreamingRequest) -> bool:
        return request.path.decode("latin-1").rstrip("/") == self.mount

    def _section(self) -> Any:
        return getattr(self.config, self.dialect.name)

    def _parse(self, params: Mapping[str, str]) -> ChunkRequest:
        return parseChunk(self.dialect, params, self.config.limits.max_size, self._section().max_chunks)

    # -- chunk uploads: decided when the headers end --------------------------------

    def bodySink(self, request: StreamingRequest) -> Optional[BodySink]:
        """
        Choose where a chunk's body goes (the L{BodyRouter} calls this at the
        end of the headers).  A C{multipart/form-data} body carries the
        chunk in its file part, whose parameters are known once the fields
        before it are; any other body is the chunk itself (C{octet} mode),
        with the parameters in the query string.
        """
        if request.method not in (b"POST", b"PUT") or not self._isEndpoint(request):
            return None
        query = queryParams(request.uri)
        contentType = header(request, "content-type")
        if (contentType or "").split(";")[0].strip().lower() == "multipart/form-data":
            boundary = boundaryOf(contentType)

            def openFile(fields: Dict[str, str]) -> BodySink:
                return self._chunkSink(request, self._parse(mergeParams(query, fields.items())))

            return MultipartSink(boundary, self._section().file_field, openFile)
        chunk = self._parse(mergeParams(query))
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
        return LateSink(decided, request.transport)

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
            if self._published(record):
                return RecordSink(ChunkAnswer(record.id, chunk.number, True))
            chunks = ChunkMap.of(record)
            if chunks.has(chunk.number):
                complete = False
                if chunks.full:
                    await self._finish(record.id)
                    complete = True
                return RecordSink(ChunkAnswer(record.id, chunk.number, complete))
            if record.expires is not None and record.expires <= self.store.clock():
                await self.store.update(record.id, self._refreshExpiry)
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
        writer = self.disk.writer(
            upload.fd,
            chunk.offset,
            self.config.disk.high_water,
            self.config.disk.low_water,
            producer=request.transport,
        )

        def finish(outcome: BodyOutcome) -> Deferred[ChunkAnswer]:
            return Deferred.fromCoroutine(self._recordChunk(upload, chunk, outcome))

        return FileSink(writer, chunk.currentSize, finish)

    async def _recordChunk(self, upload: OpenUpload, chunk: ChunkRequest, outcome: BodyOutcome) -> ChunkAnswer:
        """
        Record a chunk whose body has ended, once its bytes are durable --
        only if every byte of it arrived.  Then complete the upload if this
        was its last missing chunk.
        """
        try:
            _checkOutcome(outcome, chunk)
            number = chunk.number

            def markStored(record: UploadRecord) -> None:
                chunks = ChunkMap.of(record)
                chunks.add(number)
                record.extra["chunkMap"] = chunks.encode()
                self._refreshExpiry(record)

            try:
                record = await self.store.commit(upload, markStored)
            except OSError as e:
                raise diskError(e) from None
        finally:
            # Release the shared lock before completing: completion takes
            # the exclusive one.
            upload.close()
        if ChunkMap.of(record).full and not self._published(record):
            await self._finish(record.id)
            return ChunkAnswer(record.id, chunk.number, True)
        self._advancePrefix(record)
        return ChunkAnswer(record.id, chunk.number, self._published(record))

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
        if record.state in (TERMINATED, EXPIRED) and not self._published(record):
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
            record = await self.store.create(
                self.dialect.name,
                chunk.totalSize or None,
                self.config.janitor.expire_after,
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
            )
        except FileExistsError:
            # Another process created the data file first (O_EXCL); its
            # record follows as soon as the space is allocated.
            return await self._awaitRecord(chunk)
        except OSError as e:
            raise diskError(e) from None
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
        if record.protocol != self.dialect.name or extra.get("identifier") != chunk.identifier:
            raise BadRequest("this identifier belongs to another upload")
        for name, recorded, sent in (
            (p("TotalSize"), extra.get("totalSize"), chunk.totalSize),
            (p("ChunkSize"), extra.get("chunkSize"), chunk.chunkSize),
            (p("TotalChunks"), extra.get("totalChunks"), chunk.totalChunks),
            (p("Filename"), extra.get("filename"), chunk.filename),
        ):
            if recorded != sent:
                raise BadRequest(f"{name} differs from this upload's first chunk")

    def _refreshExpiry(self, record: UploadRecord) -> None:
        # Runs in the disk pool, under the record lock.  Also revives an
        # upload whose expiry passed before the janitor took it: a chunk
        # arriving proves its client is still there.
        expireAfter = self.config.janitor.expire_after
        if record.state == ACTIVE and expireAfter:
            record.expires = self.store.clock() + expireAfter

    # -- completion --------------------------------------------------------------------

    def _published(self, record: UploadRecord) -> bool:
        """
        Whether the upload's file was handed to the completed area: the
        record says so, or -- when a crash came between the two -- the
        sidecar in the completed area names this very upload.
        """
        if record.extra.get("completed"):
            return True
        if record.state in (TERMINATED, EXPIRED):
            return self._sidecarOf(record) is not None
        return False

    def _sidecarOf(self, record: UploadRecord) -> Optional[Dict[str, Any]]:
        path = os.path.join(self.completedDirectory, record.id + ".json")
        try:
            with open(path, encoding="utf-8") as f:
                info = json.load(f)
        except (OSError, ValueError):
            return None
        if info.get("uploadId") == record.id and info.get("created") == record.created:
            return info
        return None

    def _finish(self, uploadId: str) -> Deferred[UploadRecord]:
        """
        Complete an upload whose every chunk is stored -- once, however many
        requests notice at the same time.
        """
        return self._finishing.run(uploadId, lambda: Deferred.fromCoroutine(self._finishNow(uploadId)))

    def _advancePrefix(self, record: UploadRecord) -> None:
        """
        Hash newly contiguous chunks at the front of the file, in the disk
        pool, one job per upload at a time.
        """
        prefix = self._prefixes.get(record.id)
        if prefix is None:
            if len(self._prefixes) >= PrefixHash.limit:
                self._prefixes.pop(next(iter(self._prefixes)))
            prefix = self._prefixes[record.id] = PrefixHash()
        if prefix.running is not None:
            prefix.again = True
            return
        end = PrefixHash.end(record, prefix.offset)
        if end <= prefix.offset:
            return
        uploadId = record.id

        def done(result: Any) -> None:
            prefix.running = None
            if isinstance(result, Failure):
                # Half-hashed: useless.  Completion hashes the whole file.
                prefix.digest, prefix.offset = hashlib.sha256(), 0
                self._prefixes.pop(uploadId, None)
                return
            prefix.offset = end
            if self._prefixes.get(uploadId) is not prefix:
                return  # completion took it over
            if prefix.again:
                prefix.again = False
                try:
                    self._advancePrefix(self.store.get(uploadId))
                except UploadError:
                    del self._prefixes[uploadId]

        prefix.running = self.disk.run(prefix.hashRange, self.store.dataPath(uploadId), end)
        prefix.running.addBoth(done)

    async def _finishNow(self, uploadId: str) -> UploadRecord:
        try:
            upload = await self._lockExclusive(uploadId)
        except UploadGone:
            # The data file has left: published by another process, or by
            # a run cut short before its record said so.
            return await self._adoptPublication(uploadId)
        try:
            # Re-read under the lock: another process may have finished it.
            record = self.store.get(uploadId)
            if record.extra.get("completed") or not ChunkMap.of(record).full:
                return record
            prefix = self._prefixes.pop(uploadId, None)
            if prefix is not None and prefix.running is not None:
                await prefix.running
            try:
                info = await self.disk.run(self._publishNow, record, prefix)
                record = await self.store.update(uploadId, lambda r: _markComplete(r, info))
            except OSError as e:
                raise diskError(e) from None
        finally:
            upload.close()
        self.log.info(
            "{protocol} upload {uploadId} complete: {size} bytes, sha256 {sha256}, at {path}",
            protocol=self.dialect.name, uploadId=uploadId, size=info["size"],
            sha256=info["sha256"], path=info["path"],
        )
        return record

    async def _adoptPublication(self, uploadId: str) -> UploadRecord:
        record = self.store.get(uploadId)
        if record.extra.get("completed"):
            return record
        info = self._sidecarOf(record)
        if info is None:
            raise dataGone()
        return await self.store.update(uploadId, lambda r: _markComplete(r, info))

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

    def _publishNow(self, record: UploadRecord, prefix: Optional[PrefixHash] = None) -> Dict[str, Any]:
        """
        Hash the finished file -- what C{prefix} has not hashed yet -- and
        move it into the completed area with its sidecar.  Runs in the disk
        pool.
        """
        recovered = self._sidecarOf(record)
        if recovered is not None:
            return recovered  # published before a crash; only the record lags
        if self._completed is None:
            self._completed = CompletedFiles(self.completedDirectory)
        source = self.store.dataPath(record.id)
        target = os.path.join(self.completedDirectory, record.id)
        if os.path.exists(target) and os.path.samefile(source, target):
            os.unlink(target)  # our own link from a publication cut short
        size, sha256 = _hashFile(source, prefix)
        extra = record.extra
        info = {
            "uploadId": record.id,
            "protocol": self.dialect.name,
            "created": record.created,
            "completedAt": self.store.clock(),
            "size": size,
            "sha256": sha256,
            "identifier": extra["identifier"],
            "filename": sanitizeFilename(extra["filename"], record.id),
            "relativePath": sanitizeRelativePath(extra["relativePath"], sanitizeFilename(extra["filename"], record.id)),
            "clientFilename": extra["filename"],
            "clientRelativePath": extra["relativePath"],
            "type": extra.get("type") or None,
        }
        path = self._completed.publish(source, record.id, info, durable=self.store.durable)
        return dict(info, path=path, name=os.path.basename(path))

    # -- routes ----------------------------------------------------------------------------

    async def testChunk(self, request: Any) -> bytes:
        """
        GET: is this chunk stored in full?  200 if so, 204 if not -- never
        404, which flow.js takes as fatal for the whole file.
        """
        chunk = self._parse(mergeParams(queryParams(request.uri)))
        setHeader(request, "Cache-Control", "no-store")
        record = self._lookup(chunk.uploadId)
        if record is not None:
            self._checkAgrees(record, chunk)
            complete = self._published(record)
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


def _checkOutcome(outcome: BodyOutcome, chunk: ChunkRequest) -> None:
    """
    Refuse to record a chunk unless its whole body, and nothing more,
    reached the file.
    """
    if outcome.error is not None:
        error = outcome.error
        raise diskError(error)
    if not outcome.complete:
        raise BadRequest("the chunk was cut off")
    if outcome.overflow:
        raise BadRequest(f"the chunk is longer than its {chunk.currentSize} bytes")
    if outcome.written != chunk.currentSize:
        raise BadRequest(
            f"the chunk brought {outcome.written} bytes, not its {chunk.currentSize}"
        )


def _markComplete(record: UploadRecord, info: Mapping[str, Any]) -> None:
    """
    Record a publication.  C{extra["path"]} and C{extra["sha256"]} are where
    every protocol keeps them: the store takes C{path} as the sign that a
    complete upload's data lives in the completed area (so start-up
    reconciliation does not mistake it for lost data), and webhooks report
    both.
    """
    record.state = COMPLETE
    record.expires = None
    record.length = record.extra["totalSize"]
    record.extra["path"] = info["path"]
    record.extra["sha256"] = info["sha256"]
    record.extra["completed"] = {
        k: info[k] for k in ("path", "name", "size", "sha256", "completedAt")
    }


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


def _hashFile(path: str, prefix: Optional[PrefixHash] = None) -> Tuple[int, str]:
    """
    Size and sha256 of a file, continuing C{prefix} when given.
    """
    digest = prefix.digest if prefix is not None else hashlib.sha256()
    start = prefix.offset if prefix is not None else 0
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        size = start + _hashInto(f, digest, None)
    return size, digest.hexdigest()


def _hashInto(f: Any, digest: Any, limit: Optional[int]) -> int:
    """
    Feed C{digest} from C{f} in 1 MiB blocks read into one reused buffer
    (hashlib drops the GIL for blocks this size, so the reactor runs on);
    at most C{limit} bytes, or to the end.  Returns the bytes read.
    """
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    done = 0
    while limit is None or done < limit:
        want = len(buffer) if limit is None else min(len(buffer), limit - done)
        n = f.readinto(view[:want])
        if not n:
            break
        digest.update(view[:n])
        done += n
    return done


def chunkProtocols(config: Config, store: UploadStore, disk: DiskService) -> List[ChunkProtocol]:
    """
    The enabled dialects, ready to install.
    """
    return [
        ChunkProtocol(config, store, disk, dialect)
        for dialect in (RESUMABLE, FLOW)
        if getattr(config, dialect.name).enabled
    ]
