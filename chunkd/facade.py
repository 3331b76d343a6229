"""
The chunked-upload facade (protocols.md section 4): the three endpoints a
camera app that "speaks tus" expects from a server offering chunked
uploads, plus a health check for the load balancer.

    POST  <path>             create an upload (Upload-Length) -> 201, Location
    HEAD  <path>/<id>        where the upload stands, as in tus
    PATCH <path>/<id>        a chunk at Upload-Offset, raw or multipart/form-data
    POST  <path>/finalize    JSON {uploadId, filename, uploadToken} -> sha256, publish
    GET   /health            {"status": "OK"}, or 503 with a reason

The chunks go through the same store and disk writer as tus.  What the
facade adds is the finalize step, and it must answer at once even for a
multi-gigabyte file: the facade's uploads are sequential, so the sha256 is
computed as the bytes are written (a digest fed in the disk thread, see
L{chunkd.disk.OffsetWriter}) and kept in memory per upload
(L{RunningHashes}).  Memory does not survive a restart, so a hash that is
missing or out of step with the record is recomputed from the file, in the
disk pool.

Finalizing needs a token (L{UploadTokens}): either the one chunkd issued when
the upload was created, or one an application backend minted with a secret
it shares with chunkd (L{mintToken}).
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import hmac
import json
import os
import secrets
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from klein import Klein
from twisted.internet.defer import Deferred, TimeoutError, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from chunkd.complete import CompletedFiles, sanitizeFilename
from chunkd.config import Config
from chunkd.disk import DiskService
from chunkd.errors import (
    dataGone,
    diskError,
    noSuchUpload,
    BadRequest,
    ChecksumMismatch,
    Forbidden,
    OffsetMismatch,
    PreconditionFailed,
    TooLarge,
    Unauthorized,
    UnsupportedMediaType,
    UploadError,
    UploadGone,
    UploadLocked,
)
from chunkd.multipart import MultipartSink, boundaryOf
from chunkd.sinks import BodyOutcome, FileSink, LateSink, RecordSink
from chunkd.store import COMPLETE, OpenUpload, UploadRecord, UploadStore
from chunkd.streaming import BodyRouter, BodySink, StreamingRequest
from chunkd.tus import (
    CHECKSUMS,
    OFFSET_STREAM,
    TUS_VERSION,
    answerWrite,
    expiresHeader,
    parseChecksum,
    parseCount,
    parseMetadata,
)
from chunkd.web import header, setHeader

#: the protocol name in upload records: the facade serves only its own uploads.
FACADE = "facade"
#: raw chunk bodies: tus's type, and the plain one the seed's servers accept.
RAW_TYPES = (OFFSET_STREAM, "application/octet-stream")
#: the multipart part that carries a chunk's bytes.
CHUNK_FIELD = "chunk"
#: room for multipart framing (boundaries, part headers, small fields) on top
#: of the chunk itself when a Content-Length is checked up front.
MULTIPART_ALLOWANCE = 64 * 1024


# -- tokens ---------------------------------------------------------------------


def mintToken(secret: bytes, uploadId: str, expires: int) -> str:
    """
    A finalize token for C{uploadId}, valid until C{expires} (epoch
    seconds), as an application backend mints it with the secret it shares
    with chunkd (C{uploads.token_secret})::

        base64url(E || HMAC-SHA256(secret, uploadId || E)), no padding

    where C{E} is C{expires} as 8 bytes big-endian and C{uploadId} the 32
    hex characters of the upload's URL.  Both parts have a fixed size, so
    the concatenation is unambiguous.
    """
    stamp = struct.pack(">Q", expires)
    mac = hmac.new(secret, uploadId.encode("ascii") + stamp, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(stamp + mac).rstrip(b"=").decode("ascii")


def _tokenDigest(token: str) -> str:
    # Issued tokens are stored only as their sha256: a leaked record does
    # not leak a usable token.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class UploadTokens:
    """
    Issues and checks the tokens that authorize finalizing an upload (and,
    when configured, writing to it).

    Two kinds are accepted, so an application can pick the one that fits:

      - I{issued}: 256 random bits chunkd returns in C{Upload-Token} when the
        upload is created; the record keeps its sha256 and, with a ttl, an
        expiry.  Whoever created the upload can finalize it.
      - I{minted}: L{mintToken} with C{uploads.token_secret}.  The
        application's backend decides who may finalize which upload, and
        until when, without talking to chunkd.

    Every comparison is constant-time (C{hmac.compare_digest}).
    """

    log = Logger()

    def __init__(self, secret: str, ttl: float, issue: bool, clock: Callable[[], float]) -> None:
        self.secret = secret.encode("utf-8")
        self.ttl = ttl
        self.issue = issue
        self.clock = clock
        if self.secret and len(self.secret) < 32:
            self.log.warn("uploads.token_secret is shorter than 32 bytes: use a long random secret")
        if not self.secret and not issue:
            self.log.warn("uploads.issue_tokens is off and no uploads.token_secret is set: "
                          "no upload can be finalized")

    def issueFor(self) -> Tuple[Optional[str], Dict[str, Any]]:
        """
        A new upload's token and what its record keeps of it.

        @return: C{(token, extra)}; C{(None, {})} when chunkd issues none.
        """
        if not self.issue:
            return None, {}
        token = secrets.token_urlsafe(32)
        extra: Dict[str, Any] = {"token_sha256": _tokenDigest(token)}
        if self.ttl:
            extra["token_expires"] = self.clock() + self.ttl
        return token, extra

    def check(self, record: UploadRecord, token: Optional[str]) -> None:
        """
        Accept C{token} for C{record}, or raise.  Nothing is changed either
        way.

        @raise Unauthorized: no token was presented.
        @raise Forbidden: it is wrong, expired, or for another upload.
        """
        if not token:
            raise Unauthorized(
                "a token is required (uploadToken or X-Upload-Token)",
                headers={"WWW-Authenticate": 'Upload-Token realm="chunkd"'},
            )
        stored = record.extra.get("token_sha256")
        if isinstance(stored, str) and hmac.compare_digest(stored, _tokenDigest(token)):
            expires = record.extra.get("token_expires")
            if expires is not None and expires <= self.clock():
                raise Forbidden("the token has expired")
            return
        expires = self._mintedExpiry(record.id, token)
        if expires is None:
            raise Forbidden("the token is not valid for this upload")
        if expires <= self.clock():
            raise Forbidden("the token has expired")

    def _mintedExpiry(self, uploadId: str, token: str) -> Optional[int]:
        """
        The expiry a minted token carries if its MAC is right for
        C{uploadId}, else C{None}.
        """
        if not self.secret or len(token) > 128:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) != 8 + hashlib.sha256().digest_size:
            return None
        stamp, mac = raw[:8], raw[8:]
        expected = hmac.new(self.secret, uploadId.encode("ascii") + stamp, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            return None
        return int(struct.unpack(">Q", stamp)[0])


# -- the running sha256 -------------------------------------------------------


class RunningHashes:
    """
    The sha256 of each upload's bytes so far, kept in memory so finalize
    needs no second pass over the file.

    An entry is a hash object and the length it covers.  It is trusted only
    while that length equals the record's offset: the record moves only
    forwards, so equal means no byte was recorded that this process did not
    hash (another process sharing the storage, a restart, a failed commit
    all leave the two apart).  A PATCH hashes into a I{copy}, which becomes
    the entry only once its offset is recorded, so a refused or failed chunk
    leaves the entry as it was.

    Entries of abandoned uploads are evicted oldest first past C{limit}; a
    missing entry only costs a recomputation at finalize.
    """

    def __init__(self, limit: int = 10000) -> None:
        self.limit = limit
        self._entries: "OrderedDict[str, Tuple[Any, int]]" = OrderedDict()

    def resume(self, uploadId: str, offset: int) -> Optional[Any]:
        """
        A hash to feed the bytes written from C{offset}: a copy of the
        entry if it is in step, a fresh one at offset 0, else C{None} (the
        bytes before C{offset} were never hashed here).
        """
        entry = self._entries.get(uploadId)
        if entry is not None and entry[1] == offset:
            self._entries.move_to_end(uploadId)
            return entry[0].copy()
        if offset == 0:
            return hashlib.sha256()
        return None

    def advance(self, uploadId: str, digest: Any, length: int) -> None:
        """
        C{digest} covers the first C{length} bytes, now recorded.
        """
        self._entries[uploadId] = (digest, length)
        self._entries.move_to_end(uploadId)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def hexdigest(self, uploadId: str, length: int) -> Optional[str]:
        """
        The sha256 of the first C{length} bytes, if known here.
        """
        entry = self._entries.get(uploadId)
        if entry is None or entry[1] != length:
            return None
        return str(entry[0].hexdigest())

    def forget(self, uploadId: str) -> None:
        self._entries.pop(uploadId, None)


def sha256OfFile(path: str, length: int) -> str:
    """
    Hash the first C{length} bytes of C{path}.  Blocking: runs in the disk
    pool (hashlib releases the GIL on large buffers, so the reactor runs
    on meanwhile).

    @raise OSError: the file is shorter than its record says.
    """
    digest = hashlib.sha256()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        remaining = length
        while remaining:
            n = f.readinto(view[: min(remaining, len(buffer))])
            if not n:
                raise OSError(errno.EIO, f"{path} is shorter than its recorded length")
            digest.update(view[:n])
            remaining -= n
    return digest.hexdigest()


# -- health ---------------------------------------------------------------------


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
                try:
                    os.write(fd, b"ok")
                finally:
                    os.close(fd)
                os.unlink(probe)
            except OSError as e:
                return f"the {label} is not writable ({e.strerror})"
            if self.minFree:
                stats = os.statvfs(directory)
                free = stats.f_bavail * stats.f_frsize
                if free < self.minFree:
                    return (f"the {label} has {free} bytes free, "
                            f"below the floor of {self.minFree}")
        return None


# -- the facade -------------------------------------------------------------------


@dataclass
class Created:
    """What creation hands its route: the record and the issued token."""

    record: UploadRecord
    token: Optional[str]


@dataclass
class FinalizeRequest:
    uploadId: str
    filename: str
    token: Optional[str]


def parseFinalize(body: bytes, headerToken: Optional[str]) -> FinalizeRequest:
    """
    Read finalize's JSON body.  The token may come as C{X-Upload-Token}
    instead of C{uploadToken}; the header wins when both are sent.

    @raise BadRequest: naming what is malformed or missing.
    """
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    for name in ("uploadId", "filename"):
        if name not in data:
            raise BadRequest(f"{name} is missing")
        if not isinstance(data[name], str):
            raise BadRequest(f"{name} must be a string")
    token = data.get("uploadToken")
    if token is not None and not isinstance(token, str):
        raise BadRequest("uploadToken must be a string")
    return FinalizeRequest(data["uploadId"], data["filename"], headerToken or token)


def completeDirectory(config: Config) -> str:
    """
    The completed-files area: C{complete.directory}, or <storage>/complete.
    """
    configured = config.complete.directory
    return os.path.abspath(configured or os.path.join(config.storage.directory, "complete"))


FINALIZE_FIELDS = ("videoId", "status", "size", "checksum")


def _answerOf(stored: Dict[str, Any]) -> Dict[str, Any]:
    """
    Finalize's answer in its documented order: a repeat, read back from
    the record (whose JSON has sorted keys), is byte for byte the first.
    """
    return {name: stored[name] for name in FINALIZE_FIELDS}


def _jsonBody(request: Any, status: int, value: Dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    setHeader(request, "Content-Type", "application/json")
    setHeader(request, "Cache-Control", "no-store")
    return json.dumps(value).encode("utf-8")


class _MultipartChunk:
    """
    A multipart PATCH body, with the upload it locks.

    The upload is opened when the headers end; the chunk's L{FileSink}
    releases it once the chunk is recorded.  If the body never reaches a
    C{chunk} part, nothing else would, so this does.  It also tells a
    malformed body (the parser gave up: nothing is kept) from a dropped
    connection (as in tus, every byte that landed counts).
    """

    def __init__(self, boundary: bytes, upload: OpenUpload, fileSink: FileSink) -> None:
        self.upload = upload
        self.fileSink = fileSink
        self.opened = False
        self.connectionLost = False
        self.parser = MultipartSink(boundary, CHUNK_FIELD, self._openFile)

    def _openFile(self, fields: Dict[str, str]) -> BodySink:
        self.opened = True
        return self.fileSink

    def dataReceived(self, data: bytes) -> None:
        self.parser.dataReceived(data)

    def bodyEnded(self, trailers: Headers) -> None:
        self.parser.bodyEnded(trailers)
        if not self.opened:
            self.upload.close()

    def bodyFailed(self, reason: Failure) -> None:
        self.connectionLost = True
        self.parser.bodyFailed(reason)
        if not self.opened:
            self.upload.close()

    def result(self) -> Deferred[Any]:
        return self.parser.result()


@dataclass
class _Chunk:
    """
    One PATCH in flight: where it writes, what it may bring, and the
    digests fed as its bytes land.

    @ivar running: a copy of the upload's running sha256 (or C{None} when
        it is not in step), kept only if this chunk is recorded.
    @ivar checksum: the client's C{Upload-Checksum}, if it sent one.
    """

    upload: OpenUpload
    offset: int
    tooLarge: str
    running: Any
    checksum: Optional[Tuple[str, bytes]]
    multipart: Optional[_MultipartChunk] = None

    def __post_init__(self) -> None:
        self.check = CHECKSUMS[self.checksum[0]]() if self.checksum else None

    def digests(self) -> List[Any]:
        return [d for d in (self.running, self.check) if d is not None]

    def malformed(self, outcome: BodyOutcome) -> bool:
        """
        The multipart parser gave up inside the chunk (not the connection).
        """
        return self.multipart is not None and not outcome.complete and not self.multipart.connectionLost

    def verify(self, outcome: BodyOutcome) -> None:
        """
        @raise ChecksumMismatch: the chunk does not match its checksum.
        """
        if self.checksum is None:
            return
        if not outcome.complete:
            raise ChecksumMismatch("the chunk was cut off; its checksum cannot match")
        if self.check.digest() != self.checksum[1]:
            raise ChecksumMismatch("Upload-Checksum does not match the chunk")


class FacadeProtocol:
    """
    The chunked-upload facade at C{config.uploads.path}, and C{/health}.
    """

    log = Logger()
    exposedHeaders = [
        "Location", "Upload-Offset", "Upload-Length", "Upload-Metadata", "Upload-Expires",
        "Upload-Token", "Tus-Resumable",
    ]

    def __init__(self, config: Config, store: UploadStore, disk: DiskService,
                 completed: Optional[CompletedFiles] = None) -> None:
        self.store = store
        self.disk = disk
        # Routes and the completed area are fixed for the process's life;
        # everything else follows the config, which a reload may replace.
        self.mount = config.uploads.path
        self.completeDirectory = completed.directory if completed else completeDirectory(config)
        self._completed = completed
        self.hashes = RunningHashes()
        #: how many finalizes had to hash the file again (tests, the log).
        self.recomputed = 0
        self._lastHealth: Optional[str] = None
        self.config = config

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        """
        Take a (re)loaded config: token rules and the health floor apply
        to the next request.
        """
        self._config = config
        self.settings = config.uploads
        self.tokens = UploadTokens(self.settings.token_secret, self.settings.token_ttl,
                                   self.settings.issue_tokens, self.store.clock)
        self.health = StorageHealth(
            [("storage", self.store.uploads), ("completed area", self.completeDirectory)],
            self.settings.min_free_space, self.disk)

    @property
    def completed(self) -> CompletedFiles:
        """
        The completed-files area, made on first use: a daemon that never
        finalizes anything leaves no empty directory behind.
        """
        if self._completed is None:
            self._completed = CompletedFiles(self.completeDirectory)
        return self._completed

    # -- wiring ------------------------------------------------------------

    def install(self, app: Klein, router: BodyRouter) -> None:
        router.mount(self.mount, self.bodySink)

        def route(path: str, methods: List[str], handler: Callable[..., Any]) -> None:
            # Klein names an endpoint after its function unless told: tus has
            # handlers called "created" and "patched" too, and the last one
            # registered under a name would answer for both protocols.
            app.route(path, methods=methods, endpoint=f"facade.{handler.__name__}")(handler)

        for path in (self.mount, self.mount + "/"):
            route(path, ["POST"], self.created)
        route(self.mount + "/finalize", ["POST"], self.finalize)
        item = self.mount + "/<upload_id>"
        route(item, ["HEAD"], self.head)
        route(item, ["PATCH"], self.patched)
        # At the root whatever the mount: load balancers probe a fixed path.
        route("/health", ["GET", "HEAD"], self.healthCheck)

    def _rest(self, request: StreamingRequest) -> str:
        return request.path.decode("latin-1")[len(self.mount):].strip("/")

    def _common(self, request: Any) -> None:
        """
        Every facade answer carries Tus-Resumable (the camera app speaks
        tus); a request may omit the header, as the seed's clients do, but
        may not ask for another version.
        """
        setHeader(request, "Tus-Resumable", TUS_VERSION)
        version = header(request, "tus-resumable")
        if version is not None and version != TUS_VERSION:
            raise PreconditionFailed(
                f"Tus-Resumable must be {TUS_VERSION}", headers={"Tus-Version": TUS_VERSION}
            )

    def _facadeRecord(self, uploadId: str) -> UploadRecord:
        """
        A live facade upload.  Uploads of other protocols are not found
        here: the facade's rules (tokens, publishing) do not apply to them.
        """
        record = self.store.getLive(uploadId)
        if record.protocol != FACADE:
            raise noSuchUpload()
        return record

    def _tokenOf(self, request: Any) -> Optional[str]:
        return header(request, "x-upload-token")

    # -- body requests: decided when the headers end ---------------------------

    def bodySink(self, request: StreamingRequest) -> Optional[BodySink]:
        """
        Choose where a facade request's body goes (the L{BodyRouter} calls
        this when the headers end).  Finalize's small JSON body is left to
        the router's default bounded sink.
        """
        rest = self._rest(request)
        if request.method == b"PATCH" and rest:
            self._common(request)
            return self._patchSink(request, rest)
        if request.method == b"POST" and not rest:
            self._common(request)
            return self._creationSink(request)
        return None

    def _creationSink(self, request: StreamingRequest) -> BodySink:
        """
        POST: create an upload of C{Upload-Length} bytes.  A body, if any,
        is ignored (the facade has no creation-with-upload), and the
        answer carries no Upload-Offset, so a tus client starts at 0.
        """
        length = parseCount("Upload-Length", header(request, "upload-length"))
        if length is None:
            raise BadRequest("Upload-Length is required")
        maxSize = self.config.limits.max_size
        if maxSize and length > maxSize:
            raise TooLarge(f"Upload-Length exceeds the maximum of {maxSize} bytes")
        rawMetadata = header(request, "upload-metadata") or ""
        if len(rawMetadata) > self.config.limits.max_metadata_size:
            raise BadRequest("Upload-Metadata is too large")
        metadata = parseMetadata(rawMetadata)
        token, extra = self.tokens.issueFor()
        extra["tus_metadata"] = rawMetadata
        created = self.store.create(FACADE, length, self.config.janitor.expire_after,
                                    metadata=metadata, extra=extra)
        created.addCallback(lambda record: RecordSink(Created(record, token)))
        return LateSink(created, request.transport)

    def _patchSink(self, request: StreamingRequest, uploadId: str) -> BodySink:
        """
        PATCH: check everything that can be checked before a byte is
        written -- body type, offset, size, token -- then lock the upload
        and stream the chunk into its file.
        """
        boundary = self._boundaryOf(request)
        offset = parseCount("Upload-Offset", header(request, "upload-offset"))
        if offset is None:
            raise BadRequest("Upload-Offset is required")
        checksum = parseChecksum(header(request, "upload-checksum"))
        self._checkDeclaredSize(request, boundary)
        record = self._facadeRecord(uploadId)
        if "finalized" in record.extra:
            raise UploadGone("the upload was finalized")
        if self.settings.patch_requires_token:
            self.tokens.check(record, self._tokenOf(request))
        upload = self.store.open(uploadId)
        try:
            return self._chunkSink(request, upload, offset, boundary, checksum)
        except BaseException:
            upload.close()
            raise

    def _boundaryOf(self, request: StreamingRequest) -> Optional[bytes]:
        """
        C{None} for a raw body, the boundary for a multipart one.
        """
        contentType = header(request, "content-type") or ""
        base = contentType.split(";")[0].strip().lower()
        if base in RAW_TYPES:
            return None
        if base == "multipart/form-data":
            return boundaryOf(contentType)
        raise UnsupportedMediaType(
            f"Content-Type must be {OFFSET_STREAM} or multipart/form-data"
        )

    def _checkDeclaredSize(self, request: StreamingRequest, boundary: Optional[bytes]) -> None:
        """
        Refuse a Content-Length that is too large before touching the
        upload.  A chunked body is counted as it streams (L{FileSink}'s
        limit) instead.
        """
        chunkMax = self.settings.max_chunk_size
        declared = request.bodyLength
        if not chunkMax or declared is None:
            return
        allowed = chunkMax if boundary is None else chunkMax + MULTIPART_ALLOWANCE
        if declared > allowed:
            raise TooLarge(f"a chunk may be at most {chunkMax} bytes")

    def _chunkSink(self, request: StreamingRequest, upload: OpenUpload, offset: int,
                   boundary: Optional[bytes], checksum: Optional[Tuple[str, bytes]]) -> BodySink:
        """
        The sink that writes one chunk at C{offset} (the caller holds the
        upload's lock), hashing it on the way when the upload's running
        hash is in step -- and with the client's C{Upload-Checksum}
        algorithm too when it sent one (tus clients may: the same digest
        list, one pass).
        """
        record = upload.record
        if offset != record.offset:
            raise OffsetMismatch(
                f"Upload-Offset is {offset} but the upload is at {record.offset}",
                headers={"Upload-Offset": str(record.offset)},
            )
        assert record.length is not None  # the facade always knows the length
        limit, tooLarge = self._limitOf(record, offset)
        if boundary is None and request.bodyLength is not None and request.bodyLength > limit:
            raise TooLarge(tooLarge)
        chunk = _Chunk(upload, offset, tooLarge, self.hashes.resume(record.id, offset), checksum)
        writer = self.disk.writer(
            upload.fd, offset, self.config.disk.high_water, self.config.disk.low_water,
            producer=request.transport, digests=chunk.digests(),
        )
        fileSink = FileSink(writer, limit, lambda outcome: self._recordChunk(chunk, outcome))
        if boundary is None:
            return fileSink
        chunk.multipart = _MultipartChunk(boundary, upload, fileSink)
        return chunk.multipart

    def _limitOf(self, record: UploadRecord, offset: int) -> Tuple[int, str]:
        """
        The most bytes this chunk may bring, and why.
        """
        assert record.length is not None
        remaining = record.length - offset
        chunkMax = self.settings.max_chunk_size
        if chunkMax and chunkMax < remaining:
            return chunkMax, f"a chunk may be at most {chunkMax} bytes"
        return remaining, "the chunk runs past Upload-Length"

    def _recordChunk(self, chunk: "_Chunk", outcome: BodyOutcome) -> Deferred[UploadRecord]:
        """
        Record what a chunk brought and release the upload.  A chunk that
        was too large, malformed or failed its checksum counts for nothing;
        one cut off by a dropped connection counts for every byte that
        landed, as in tus (unless it carried a checksum: whole or nothing).
        """
        upload = chunk.upload
        try:
            if outcome.error is not None:
                raise diskError(outcome.error, "writing the chunk")
            if outcome.overflow:
                raise TooLarge(chunk.tooLarge)
            if chunk.malformed(outcome):
                raise BadRequest("the multipart body is malformed")
            chunk.verify(outcome)
        except UploadError as e:
            upload.close()
            return fail(e)
        newOffset = chunk.offset + outcome.written
        uploadId = upload.record.id
        digest = chunk.running
        expireAfter = self.config.janitor.expire_after
        clock = self.store.clock

        def mutate(record: UploadRecord) -> None:
            # Every byte may be here, yet the upload is finished only when
            # it is finalized (with its name and sha256): until then it
            # stays active, and expires if nobody ever finalizes it.
            record.offset = newOffset
            if expireAfter:
                record.expires = clock() + expireAfter

        def recorded(record: UploadRecord) -> UploadRecord:
            if digest is not None:
                self.hashes.advance(uploadId, digest, newOffset)
            return record

        def release(result: Any) -> Any:
            upload.close()
            return result

        return self.store.commit(upload, mutate).addCallback(recorded).addBoth(release)

    # -- routes ------------------------------------------------------------------

    async def created(self, request: Any) -> bytes:
        created: Created = await request.bodySink.result()
        record = created.record
        request.setResponseCode(201)
        setHeader(request, "Location", f"{self.mount}/{record.id}")
        if created.token is not None:
            setHeader(request, "Upload-Token", created.token)
        expiresHeader(request, record)
        return b""

    async def patched(self, request: Any, upload_id: str) -> bytes:
        return answerWrite(request, await request.bodySink.result())

    def head(self, request: Any, upload_id: str) -> bytes:
        self._common(request)
        record = self._facadeRecord(upload_id)
        if self.settings.patch_requires_token:
            self.tokens.check(record, self._tokenOf(request))
        request.setResponseCode(200)
        setHeader(request, "Cache-Control", "no-store")
        setHeader(request, "Upload-Offset", record.offset)
        setHeader(request, "Upload-Length", record.length)
        if record.extra.get("tus_metadata"):
            setHeader(request, "Upload-Metadata", record.extra["tus_metadata"])
        expiresHeader(request, record)
        return b""

    async def finalize(self, request: Any) -> bytes:
        """
        Check the token, then publish the finished upload under its
        sanitized name and answer with its size and sha256.  A repeat gets
        the first answer; a wrong token changes nothing.
        """
        self._common(request)
        body = await request.bodySink.result()
        asked = parseFinalize(body, self._tokenOf(request))
        record = self._facadeRecord(asked.uploadId)
        self.tokens.check(record, asked.token)
        answer = await self._finalized(record, asked.filename)
        return _jsonBody(request, 200, answer)

    async def _finalized(self, record: UploadRecord, filename: str) -> Dict[str, Any]:
        if "finalized" in record.extra:
            return _answerOf(record.extra["finalized"])
        if record.length is None or record.offset != record.length:
            raise OffsetMismatch(
                f"the upload is not complete: {record.offset} of {record.length} bytes",
                headers={"Upload-Offset": str(record.offset)},
            )
        try:
            upload = self.store.open(record.id)
        except UploadGone:
            # Its data moved away since we read the record: another
            # finalize got there first (or is just finishing).
            again = self._facadeRecord(record.id)
            if "finalized" in again.extra:
                return _answerOf(again.extra["finalized"])
            if "publishing" in again.extra:
                return await self._adoptPublication(again)
            raise UploadLocked("the upload is being finalized") from None
        try:
            return await self._publish(upload, filename)
        finally:
            upload.close()

    async def _publish(self, upload: OpenUpload, filename: str) -> Dict[str, Any]:
        """
        With the upload locked: its sha256, the move into the completed
        area, and the record that makes a repeat return the same answer.
        """
        record = upload.record
        if "finalized" in record.extra:
            return _answerOf(record.extra["finalized"])
        size = record.length or 0
        checksum = await self._sha256(record)
        answer = {"videoId": record.id, "status": "complete", "size": size,
                  "checksum": f"sha256:{checksum}"}
        name = sanitizeFilename(filename, fallback=f"upload-{record.id}")
        info = {"id": record.id, "protocol": FACADE, "filename": filename, "size": size,
                "sha256": checksum, "metadata": record.metadata, "created": record.created}

        def announce(r: UploadRecord) -> None:
            # If we are cut short after the move, this says where to look.
            r.extra["publishing"] = name

        try:
            await self.store.update(record.id, announce)
            target = await self.disk.run(self.completed.publish, self.store.dataPath(record.id),
                                         name, info, self.config.storage.durable)
        except OSError as e:
            self.log.failure("publishing upload {uploadId}", Failure(), uploadId=record.id)
            raise diskError(e, "publishing the upload") from None
        await self._recordFinalized(record.id, target, checksum, answer)
        self.hashes.forget(record.id)
        self.log.info("upload {uploadId} finalized as {name} ({size} bytes, sha256 {checksum})",
                      uploadId=record.id, name=os.path.basename(target), size=size, checksum=checksum)
        return answer

    def _recordFinalized(self, uploadId: str, target: str, checksum: str, answer: Dict[str, Any]) -> Deferred[UploadRecord]:
        def mutate(r: UploadRecord) -> None:
            r.extra["path"] = target
            r.extra["sha256"] = checksum
            r.extra["finalized"] = answer
            r.extra.pop("publishing", None)
            r.state = COMPLETE  # the store announces post-finish, with path and sha256
            r.expires = None

        return self.store.update(uploadId, mutate)

    async def _adoptPublication(self, record: UploadRecord) -> Dict[str, Any]:
        """
        Finish a finalize that was cut short between moving the file and
        recording it: the sidecar in the completed area says what the answer
        was.
        """
        found = await self.disk.run(self.completed.findPublished, record.extra["publishing"], record.id)
        if found is None:
            raise dataGone()
        target, sidecar = found
        answer = {"videoId": record.id, "status": "complete", "size": sidecar["size"],
                  "checksum": f"sha256:{sidecar['sha256']}"}
        await self._recordFinalized(record.id, target, sidecar["sha256"], answer)
        self.log.info("upload {uploadId}: finalize cut short was finished from {name}",
                      uploadId=record.id, name=os.path.basename(target))
        return answer

    def _sha256(self, record: UploadRecord) -> Deferred[str]:
        """
        The upload's sha256: at once from the running hash, or -- after a
        restart, or when it fell out of step -- from the file, in the disk
        pool, never on the reactor thread.
        """
        size = record.length or 0
        known = self.hashes.hexdigest(record.id, size)
        if known is not None:
            return succeed(known)
        self.recomputed += 1
        self.log.info("recomputing the sha256 of upload {uploadId} ({size} bytes) from its file",
                      uploadId=record.id, size=size)
        return self.disk.run(sha256OfFile, self.store.dataPath(record.id), size)

    async def healthCheck(self, request: Any) -> bytes:
        reason = await self.health.check()
        if reason != self._lastHealth:
            # Load balancers probe every few seconds: log changes, not probes.
            self._lastHealth = reason
            if reason is None:
                self.log.info("health check passing again")
            else:
                self.log.warn("health check failing: {reason}", reason=reason)
        if reason is None:
            return _jsonBody(request, 200, {"status": "OK"})
        return _jsonBody(request, 503, {"status": "UNAVAILABLE", "reason": reason})
