"""
tus 1.0.0: core, creation, creation-with-upload, creation-defer-length,
expiration, checksum, checksum-trailer, termination, concatenation and
concatenation-unfinished -- every rule of the protocol in one file.

Requests with a body (PATCH, and POST which may carry the first bytes) are
decided in L{TusProtocol.bodySink}, when the headers end: the upload is
found, locked and checked there, and the body streams into its file.  The
routes then only format what the sink recorded.  Requests without a body
(HEAD, GET, DELETE, OPTIONS) are handled by their routes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from email.utils import formatdate
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from klein import Klein
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.static import File

from chunkd.config import Config
from chunkd.disk import DiskService
from chunkd.errors import (
    Conflict,
    MethodNotAllowed,
    diskError,
    noSuchUpload,
    BadRequest,
    ChecksumMismatch,
    Forbidden,
    OffsetMismatch,
    PreconditionFailed,
    TooLarge,
    UnsupportedMediaType,
    UploadError,
    UploadLocked,
    UploadNotFound,
)
from chunkd.once import OneShotResult
from chunkd.sinks import BodyOutcome, FileSink, LateSink, RecordSink
from chunkd.store import ACTIVE, COMPLETE, OpenUpload, UploadRecord, UploadStore, isUploadId
from chunkd.streaming import BodyRouter, BodySink, DiscardBody, StreamingRequest, trailersSupported
from chunkd.web import baseURL, header, setHeader

TUS_VERSION = "1.0.0"
OFFSET_STREAM = "application/offset+octet-stream"
CHECKSUMS = {"sha1": hashlib.sha1, "md5": hashlib.md5, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
_DIGITS = re.compile(r"^[0-9]{1,19}$")
_METADATA_KEY = re.compile(r"^[^\s,]+$")


def httpDate(epoch: float) -> str:
    """RFC 9110 date, as Upload-Expires wants it."""
    return formatdate(epoch, usegmt=True)


def parseCount(name: str, value: Optional[str]) -> Optional[int]:
    """
    A non-negative integer header, or C{None} when absent.

    @raise BadRequest: naming the header when it is not a plain number.
    """
    if value is None:
        return None
    if not _DIGITS.match(value):
        raise BadRequest(f"{name} must be a non-negative integer")
    return int(value)


def parseMetadata(value: Optional[str]) -> Dict[str, Optional[str]]:
    """
    Decode C{Upload-Metadata}: comma-separated C{key base64value} pairs; the
    value may be absent.  Keys are non-empty, without spaces or commas, and
    unique.  Values are decoded as UTF-8 text (with replacement), for hooks
    and downloads; the raw header is kept to echo it on HEAD.

    @raise BadRequest: on any malformed pair, so nothing is dropped silently.
    """
    result: Dict[str, Optional[str]] = {}
    if value is None or not value.strip():
        return result
    for pair in value.split(","):
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not parts[0] or not _METADATA_KEY.match(parts[0]):
            raise BadRequest("Upload-Metadata is malformed: expected 'key base64value' pairs")
        key = parts[0]
        if key in result:
            raise BadRequest(f"Upload-Metadata repeats the key {key!r}")
        if len(parts) == 1:
            result[key] = None
            continue
        try:
            decoded = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"Upload-Metadata value for {key!r} is not base64") from None
        result[key] = decoded.decode("utf-8", "replace")
    return result


def parseChecksum(value: Optional[str]) -> Optional[Tuple[str, bytes]]:
    """
    Parse C{Upload-Checksum: <algorithm> <base64 digest>}.

    @raise BadRequest: unknown algorithm or malformed digest.
    """
    if value is None:
        return None
    parts = value.split(" ")
    if len(parts) != 2:
        raise BadRequest("Upload-Checksum must be '<algorithm> <base64 digest>'")
    algorithm = parts[0].lower()
    if algorithm not in CHECKSUMS:
        raise BadRequest(f"unsupported checksum algorithm {parts[0]!r}")
    try:
        digest = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Upload-Checksum digest is not base64") from None
    return algorithm, digest


def expiresHeader(request: Any, record: UploadRecord) -> None:
    """C{Upload-Expires}, for an upload that will expire."""
    if record.state == ACTIVE and record.expires is not None:
        setHeader(request, "Upload-Expires", httpDate(record.expires))


def answerWrite(request: Any, record: UploadRecord) -> bytes:
    """The answer to a PATCH whose bytes were recorded: 204 and the offset."""
    request.setResponseCode(204)
    setHeader(request, "Upload-Offset", record.offset)
    expiresHeader(request, record)
    return b""


class TusProtocol:
    """
    tus 1.0.0 at C{config.tus.path}.
    """

    log = Logger()
    exposedHeaders = [
        "Location", "Upload-Offset", "Upload-Length", "Upload-Defer-Length",
        "Upload-Metadata", "Upload-Concat", "Upload-Expires", "Tus-Resumable",
        "Tus-Version", "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm",
    ]

    def __init__(self, config: Config, store: UploadStore, disk: DiskService) -> None:
        self.config = config
        self.store = store
        self.disk = disk
        self.mount = config.tus.path
        extensions = [
            "creation", "creation-with-upload", "creation-defer-length", "expiration",
            "checksum", "termination", "concatenation", "concatenation-unfinished",
        ]
        if trailersSupported():
            extensions.insert(5, "checksum-trailer")
        self.extensions = extensions

    # -- wiring ------------------------------------------------------------

    def install(self, app: Klein, router: BodyRouter) -> None:
        router.mount(self.mount, self.bodySink)
        # Klein names routes after their functions unless told: name them,
        # so another protocol's handler of the same name cannot replace them.
        for n, path in enumerate((self.mount, self.mount + "/")):
            app.route(path, methods=["OPTIONS"], endpoint=f"tus.options.{n}")(self.options)
            app.route(path, methods=["POST"], endpoint=f"tus.created.{n}")(self.created)
        item = self.mount + "/<upload_id>"
        app.route(item, methods=["OPTIONS"], endpoint="tus.options.item")(self.options)
        app.route(item, methods=["HEAD", "GET"], endpoint="tus.headOrGet")(self.headOrGet)
        app.route(item, methods=["PATCH"], endpoint="tus.patched")(self.patched)
        app.route(item, methods=["DELETE"], endpoint="tus.delete")(self.delete)

    def _record(self, uploadId: str) -> UploadRecord:
        """
        A live tus upload's record.  Uploads of the other protocols share
        the store but are not tus uploads: here they do not exist.
        """
        record = self.store.getLive(uploadId)
        if record.protocol != "tus":
            raise noSuchUpload()
        return record

    def _open(self, uploadId: str) -> OpenUpload:
        self._record(uploadId)
        return self.store.open(uploadId)

    def _uploadIdOf(self, request: StreamingRequest) -> Optional[str]:
        rest = request.path.decode("latin-1")[len(self.mount):].strip("/")
        return rest or None

    def _common(self, request: Any) -> None:
        setHeader(request, "Tus-Resumable", TUS_VERSION)

    def _checkVersion(self, request: Any) -> None:
        self._common(request)
        if header(request, "tus-resumable") != TUS_VERSION:
            raise PreconditionFailed(
                f"Tus-Resumable must be {TUS_VERSION}", headers={"Tus-Version": TUS_VERSION}
            )

    def _maxSize(self) -> int:
        return self.config.limits.max_size

    def _expiry(self) -> float:
        return self.config.janitor.expire_after

    # -- body requests: decided when the headers end ---------------------------

    def bodySink(self, request: StreamingRequest) -> Optional[BodySink]:
        """
        Choose where a tus request's body goes (the L{BodyRouter} calls this
        at the end of the headers).  Errors raised here are answered once
        the body has been discarded.
        """
        if request.method == b"PATCH":
            uploadId = self._uploadIdOf(request)
            if uploadId is None:
                return DiscardBody(MethodNotAllowed("PATCH needs an upload URL"))
            self._checkVersion(request)
            return self._patchSink(request, uploadId)
        if request.method == b"POST" and self._uploadIdOf(request) is None:
            self._checkVersion(request)
            return self._creationSink(request)
        return None

    def _patchSink(self, request: StreamingRequest, uploadId: str) -> BodySink:
        contentType = (header(request, "content-type") or "").split(";")[0].strip().lower()
        if contentType != OFFSET_STREAM:
            raise UnsupportedMediaType(f"Content-Type must be {OFFSET_STREAM}")
        offset = parseCount("Upload-Offset", header(request, "upload-offset"))
        if offset is None:
            raise BadRequest("Upload-Offset is required")
        checksum = parseChecksum(header(request, "upload-checksum"))
        newLength = parseCount("Upload-Length", header(request, "upload-length"))
        upload = self._open(uploadId)
        try:
            return self._writeSink(request, upload, offset, newLength, checksum)
        except BaseException:
            upload.close()
            raise

    def _writeSink(
        self,
        request: StreamingRequest,
        upload: OpenUpload,
        offset: int,
        newLength: Optional[int],
        checksum: Optional[Tuple[str, bytes]],
    ) -> BodySink:
        """
        Check a write against the upload (the caller holds its lock) and
        return the sink that streams it into the file.
        """
        record = upload.record
        if record.extra.get("concat") == "final":
            raise Forbidden("a final concatenated upload cannot be patched")
        if offset != record.offset:
            raise OffsetMismatch(
                f"Upload-Offset is {offset} but the upload is at {record.offset}",
                headers={"Upload-Offset": str(record.offset)},
            )
        length = record.length
        if newLength is not None:
            if length is not None and newLength != length:
                raise BadRequest("Upload-Length cannot change once set")
            if newLength < record.offset:
                raise BadRequest("Upload-Length is below the current offset")
            if self._maxSize() and newLength > self._maxSize():
                raise TooLarge(f"Upload-Length exceeds the maximum of {self._maxSize()} bytes")
            length = newLength
        if length is not None:
            limit: Optional[int] = length - offset
        elif self._maxSize():
            limit = self._maxSize() - offset
        else:
            limit = None
        bodyLength = request.bodyLength
        if limit is not None and bodyLength is not None and bodyLength > limit:
            raise TooLarge(f"the body runs {bodyLength - limit} bytes past the upload's length")
        digest = CHECKSUMS[checksum[0]]() if checksum else None
        writer = self.disk.writer(
            upload.fd,
            offset,
            self.config.disk.high_water,
            self.config.disk.low_water,
            producer=request.transport,
            digests=[digest] if digest else [],
        )

        every = self.config.storage.checkpoint_every
        checkpoints: Optional[OffsetCheckpoints] = None
        if every and bodyLength is not None and checksum is None:
            # Only a body that can neither fail a checksum nor overflow may
            # have its offset recorded before it ends.
            checkpoints = OffsetCheckpoints(
                lambda written: self.store.commit(upload, self._offsetMutation(offset + written, length)),
                every,
            )
            writer.progress = checkpoints.written

        def finish(outcome: BodyOutcome) -> Deferred[UploadRecord]:
            # The last checkpoint, if one is under way, settles first: offsets
            # are recorded in order, and the upload stays open until then.
            settled = checkpoints.settled() if checkpoints is not None else succeed(None)
            return settled.addCallback(
                lambda _: self._recordWrite(upload, offset, length, outcome, checksum, digest))

        return FileSink(writer, limit, finish)

    def _recordWrite(
        self,
        upload: OpenUpload,
        offset: int,
        length: Optional[int],
        outcome: BodyOutcome,
        checksum: Optional[Tuple[str, bytes]],
        digest: Any,
    ) -> Deferred[UploadRecord]:
        """
        Record what a body brought, once its bytes are in the file, and
        release the upload.  A checksummed body counts whole or not at all;
        a plain one that was cut off counts for every byte that landed.
        """
        try:
            if outcome.error is not None:
                raise diskError(outcome.error, "writing the upload")
            if outcome.overflow:
                raise TooLarge("the body runs past the upload's length")
            if checksum is None and outcome.complete:
                announced = outcome.trailers.getRawHeaders(b"upload-checksum")
                if announced and "checksum-trailer" in self.extensions:
                    checksum = parseChecksum(announced[0].decode("latin-1").strip())
                    # The trailer came after the bytes: hash what was written.
                    return self._verifyTrailerChecksum(upload, offset, length, outcome, checksum)
            if checksum is not None:
                if not outcome.complete:
                    raise ChecksumMismatch("the body was cut off; its checksum cannot match")
                if digest.digest() != checksum[1]:
                    raise ChecksumMismatch("Upload-Checksum does not match the body")
        except UploadError as e:
            upload.close()
            return fail(e)
        return self._commitOffset(upload, offset + outcome.written, length)

    def _verifyTrailerChecksum(
        self,
        upload: OpenUpload,
        offset: int,
        length: Optional[int],
        outcome: BodyOutcome,
        checksum: Optional[Tuple[str, bytes]],
    ) -> Deferred[UploadRecord]:
        assert checksum is not None
        algorithm, expected = checksum

        def hashWritten() -> bytes:
            h = CHECKSUMS[algorithm]()
            remaining = outcome.written
            with open(self.store.dataPath(upload.record.id), "rb") as f:
                f.seek(offset)
                while remaining:
                    block = f.read(min(remaining, 1 << 20))
                    if not block:
                        break
                    h.update(block)
                    remaining -= len(block)
            return h.digest()

        def compare(actual: bytes) -> Deferred[UploadRecord]:
            if actual != expected:
                upload.close()
                return fail(ChecksumMismatch("Upload-Checksum trailer does not match the body"))
            return self._commitOffset(upload, offset + outcome.written, length)

        d = self.disk.run(hashWritten)
        d.addErrback(_releasing, upload)
        return d.addCallback(compare)

    def _offsetMutation(self, newOffset: int, length: Optional[int]) -> Callable[[UploadRecord], None]:
        """
        What recording C{newOffset} does to an upload's record.
        """
        expireAfter = self._expiry()
        clock = self.store.clock

        def mutate(record: UploadRecord) -> None:
            record.offset = newOffset
            record.length = length
            if length is not None and newOffset == length:
                record.state = COMPLETE
                record.expires = None
            elif expireAfter:
                record.expires = clock() + expireAfter

        return mutate

    def _commitOffset(
        self, upload: OpenUpload, newOffset: int, length: Optional[int]
    ) -> Deferred[UploadRecord]:
        d = self.store.commit(upload, self._offsetMutation(newOffset, length))

        def release(result: Any) -> Any:
            upload.close()
            return result

        return d.addBoth(release)

    def _creationSink(self, request: StreamingRequest) -> BodySink:
        """
        POST: create an upload, and -- with creation-with-upload -- stream the
        body into it as its first PATCH.
        """
        concat = header(request, "upload-concat")
        if concat is not None and concat.startswith("final"):
            return self._finalSink(request, concat)
        if concat is not None and concat != "partial":
            raise BadRequest("Upload-Concat must be 'partial' or 'final;<urls>'")
        length = parseCount("Upload-Length", header(request, "upload-length"))
        defer = header(request, "upload-defer-length")
        if defer is not None and defer != "1":
            raise BadRequest("Upload-Defer-Length must be 1")
        if (length is None) == (defer is None):
            raise BadRequest("send exactly one of Upload-Length and Upload-Defer-Length: 1")
        if self._maxSize() and length is not None and length > self._maxSize():
            raise TooLarge(f"Upload-Length exceeds the maximum of {self._maxSize()} bytes")
        rawMetadata = header(request, "upload-metadata") or ""
        if len(rawMetadata) > self.config.limits.max_metadata_size:
            raise BadRequest("Upload-Metadata is too large")
        metadata = parseMetadata(rawMetadata)
        contentType = (header(request, "content-type") or "").split(";")[0].strip().lower()
        withUpload = contentType == OFFSET_STREAM and request.bodyLength != 0
        checksum = parseChecksum(header(request, "upload-checksum")) if withUpload else None
        extra: Dict[str, Any] = {"tus_metadata": rawMetadata}
        if concat == "partial":
            extra["concat"] = "partial"
        created = self.store.create(
            "tus", length, self._expiry(), metadata=metadata, extra=extra
        )
        if not withUpload:
            return LateSink(created.addCallback(RecordSink), request.transport)
        request.tusWithUpload = True  # type: ignore[attr-defined]

        def startWriting(record: UploadRecord) -> BodySink:
            upload = self.store.open(record.id)
            try:
                return self._writeSink(request, upload, 0, None, checksum)
            except BaseException:
                upload.close()
                raise

        return LateSink(created.addCallback(startWriting), request.transport)

    def _finalSink(self, request: StreamingRequest, concat: str) -> BodySink:
        """
        POST with C{Upload-Concat: final;<urls>}: a final upload made of
        partials, in order (a partial may appear more than once).
        """
        if header(request, "upload-length") is not None:
            raise BadRequest("a final upload takes no Upload-Length")
        urls = concat[len("final"):].lstrip(";").split()
        if not urls:
            raise BadRequest("Upload-Concat: final names no partial uploads")
        if len(urls) > self.config.limits.max_concat_parts:
            raise BadRequest("Upload-Concat: final names too many partial uploads")
        parts: List[str] = []
        total = 0
        for url in urls:
            path = urlsplit(url).path.rstrip("/")
            prefix, _, uploadId = path.rpartition("/")
            if prefix != self.mount or not isUploadId(uploadId):
                raise BadRequest(f"{url!r} is not an upload of this server")
            try:
                part = self._record(uploadId)
            except UploadNotFound:
                raise BadRequest(f"partial upload {url!r} does not exist") from None
            if part.extra.get("concat") != "partial":
                raise BadRequest(f"{url!r} is not a partial upload")
            if part.length is None:
                raise BadRequest(f"partial upload {url!r} has no length yet")
            total += part.length
            parts.append(uploadId)
        if self._maxSize() and total > self._maxSize():
            raise TooLarge(f"the partial uploads add up to more than {self._maxSize()} bytes")
        rawMetadata = header(request, "upload-metadata") or ""
        metadata = parseMetadata(rawMetadata)
        extra = {"tus_metadata": rawMetadata, "concat": "final", "parts": parts}
        created = self.store.create("tus", total, None, metadata=metadata, extra=extra)
        created.addCallback(lambda record: self._assembleIfReady(record.id))
        return LateSink(created.addCallback(RecordSink), request.transport)

    def _assembleIfReady(self, uploadId: str) -> Deferred[UploadRecord]:
        """
        Make a final upload's file from its partials once every partial is
        complete (concatenation-unfinished lets a final wait for them).
        Returns the final's record, complete or not.
        """
        record = self.store.get(uploadId)
        if record.state != ACTIVE:
            return succeed(record)
        parts = [self.store.get(p) for p in record.extra["parts"]]
        if not all(p.state == COMPLETE for p in parts):
            return succeed(record)
        try:
            upload = self.store.open(uploadId)
        except UploadLocked:
            return succeed(record)  # another request is assembling it now
        if upload.record.state != ACTIVE:
            upload.close()
            return succeed(upload.record)
        sources = [self.store.dataPath(p.id) for p in parts]

        def copyParts() -> None:
            position = 0
            for source in sources:
                with open(source, "rb") as f:
                    remaining = os.fstat(f.fileno()).st_size
                    while remaining:
                        n = os.copy_file_range(f.fileno(), upload.fd, remaining, offset_dst=position)
                        if n == 0:
                            break
                        position += n
                        remaining -= n

        d = self.disk.run(copyParts)
        d.addErrback(_releasing, upload)
        return d.addCallback(lambda _: self._commitOffset(upload, record.length or 0, record.length))

    # -- routes ----------------------------------------------------------------

    def options(self, request: Any, upload_id: Optional[str] = None) -> bytes:
        self._common(request)
        request.setResponseCode(200)
        setHeader(request, "Tus-Version", TUS_VERSION)
        setHeader(request, "Tus-Extension", ",".join(self.extensions))
        setHeader(request, "Tus-Checksum-Algorithm", ",".join(CHECKSUMS))
        if self._maxSize():
            setHeader(request, "Tus-Max-Size", self._maxSize())
        return b""

    async def created(self, request: Any) -> bytes:
        record: UploadRecord = await request.bodySink.result()
        request.setResponseCode(201)
        location = f"{self.mount}/{record.id}"
        if not self.config.tus.relative_location:
            location = baseURL(request, self.config.network.trust_proxy) + location
        setHeader(request, "Location", location)
        if getattr(request, "tusWithUpload", False):
            setHeader(request, "Upload-Offset", record.offset)
        expiresHeader(request, record)
        return b""

    async def patched(self, request: Any, upload_id: str) -> bytes:
        return answerWrite(request, await request.bodySink.result())

    def headOrGet(self, request: Any, upload_id: str) -> Any:
        """
        HEAD answers synchronously (it is the most frequent request, and a
        coroutine costs it a fifth of its time); only a final upload that
        may need assembling, and GET, take the asynchronous path.
        """
        if request.method == b"GET":
            self._common(request)
            return self._download(request, upload_id)
        self._checkVersion(request)
        record = self._record(upload_id)
        if record.extra.get("concat") == "final" and record.state == ACTIVE:
            return self._assembleIfReady(upload_id).addCallback(
                lambda assembled: self._headAnswer(request, assembled))
        return self._headAnswer(request, record)

    def _headAnswer(self, request: Any, record: UploadRecord) -> bytes:
        setHeader(request, "Cache-Control", "no-store")
        request.setResponseCode(200)
        if not (record.extra.get("concat") == "final" and record.state != COMPLETE):
            setHeader(request, "Upload-Offset", record.offset)
        if record.length is None:
            setHeader(request, "Upload-Defer-Length", 1)
        else:
            setHeader(request, "Upload-Length", record.length)
        if record.extra.get("tus_metadata"):
            setHeader(request, "Upload-Metadata", record.extra["tus_metadata"])
        concat = record.extra.get("concat")
        if concat == "partial":
            setHeader(request, "Upload-Concat", "partial")
        elif concat == "final":
            urls = " ".join(f"{self.mount}/{p}" for p in record.extra["parts"])
            setHeader(request, "Upload-Concat", f"final;{urls}")
        expiresHeader(request, record)
        return b""

    def _download(self, request: Any, uploadId: str) -> Any:
        """
        GET of a finished upload (tusd's extension): the bytes, with byte
        ranges, named and typed from its metadata -- always as an
        attachment, so an upload can never run as a page of this origin.
        """
        if not self.config.tus.download:
            raise MethodNotAllowed("downloads are disabled")
        record = self._record(uploadId)
        if record.state != COMPLETE:
            raise Conflict("the upload is not finished",
                           headers={"Upload-Offset": str(record.offset)})
        resource = File(self.store.dataPath(uploadId))
        resource.type = _safeContentType(record.metadata.get("filetype") or record.metadata.get("contentType"))
        resource.encoding = None
        setHeader(request, "Content-Disposition", _attachment(record.metadata.get("filename")))
        setHeader(request, "X-Content-Type-Options", "nosniff")
        return resource

    def delete(self, request: Any, upload_id: str) -> bytes:
        self._checkVersion(request)
        upload = self._open(upload_id)
        try:
            self.store.terminate(upload_id)
        finally:
            upload.close()
        request.setResponseCode(204)
        return b""


class OffsetCheckpoints:
    """
    Records a long PATCH's offset while its body still streams, every
    C{every} bytes that reached the file, so a crash in the middle of a
    multi-gigabyte body loses at most that much of it.  One checkpoint at
    a time: one that comes due while another is under way waits for the
    next batch.
    """

    log = Logger()

    def __init__(self, commit: Callable[[int], "Deferred[Any]"], every: int) -> None:
        self.commit = commit
        self.every = every
        self.recorded = 0
        self.running: Optional[Deferred[Any]] = None
        self._settled: Optional[OneShotResult[None]] = None

    def written(self, written: int) -> None:
        if self.running is not None or written - self.recorded < self.every:
            return
        self.recorded = written
        self.running = self.commit(written)
        self.running.addBoth(self._done)

    def _done(self, result: Any) -> None:
        self.running = None
        if isinstance(result, Failure):
            # The PATCH's final record still comes; this one only hurried it.
            self.log.failure("recording a checkpoint", result)
        settled, self._settled = self._settled, None
        if settled is not None:
            settled.fire(None)

    def settled(self) -> "Deferred[None]":
        if self.running is None:
            return succeed(None)
        if self._settled is None:
            self._settled = OneShotResult()
        return self._settled.whenFired()


def _releasing(failure: Failure, upload: OpenUpload) -> Failure:
    """An errback: let go of the upload, pass the failure on."""
    upload.close()
    return failure


_TOKEN = re.compile(r"^[A-Za-z0-9!#$&^_.+\-]+/[A-Za-z0-9!#$&^_.+\-]+$")


def _safeContentType(value: Optional[str]) -> str:
    if value and _TOKEN.match(value):
        return value
    return "application/octet-stream"


def _attachment(filename: Optional[str]) -> str:
    if not filename:
        return "attachment"
    name = os.path.basename(filename.replace("\\", "/")).replace('"', "")
    name = "".join(c for c in name if c.isprintable())
    from urllib.parse import quote

    ascii = name.encode("ascii", "replace").decode("ascii") or "download"
    return f"attachment; filename=\"{ascii}\"; filename*=UTF-8''{quote(name)}"
