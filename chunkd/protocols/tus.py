"""
tus 1.0.0: core, creation, creation-with-upload, creation-defer-length,
expiration, checksum, checksum-trailer, termination, concatenation and
concatenation-unfinished -- every rule of the protocol in one file.

Requests with a body (PATCH, and POST which may carry the first bytes) are
decided by their route's body factory when the headers end: the upload is
found, locked and checked there, and the body streams into its file
through the upload layer.  The route then only formats what was recorded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence
from urllib.parse import quote, urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.static import File

from chunkd.complete import sanitizeFilename
from chunkd.config import Config
from chunkd.errors import (
    BadRequest,
    ChecksumMismatch,
    Conflict,
    Forbidden,
    MethodNotAllowed,
    TooLarge,
    UnsupportedMediaType,
    UploadError,
    UploadLocked,
    UploadNotFound,
)
from chunkd.protocols.tuswire import (
    CHECKSUMS,
    OFFSET_STREAM,
    TUS_FAMILY,
    TUS_VERSION,
    answerHead,
    answerWrite,
    checkVersion,
    expiresHeader,
    mediaType,
    parseChecksum,
    parseCount,
    readMetadata,
    requiredOffset,
)
from chunkd.routes import Route
from chunkd.sinks import BodyOutcome, LateSink, MappedSink, RecordSink
from chunkd.store import ACTIVE, COMPLETE, OpenUpload, UploadRecord, isUploadId
from chunkd.streaming import BodySink, StreamingRequest, trailersSupported
from chunkd.uploads import Checksum, UploadService, WritePlan, releasing
from chunkd.web import baseURL, header, setHeader

TUS = "tus"


@dataclass
class Created:
    """What a creation hands its route: the record, and whether a body came."""

    record: UploadRecord
    withUpload: bool


class TusProtocol:
    """
    tus 1.0.0 at C{config.tus.path}.
    """

    name = TUS
    log = Logger()
    exposedHeaders = [
        "Location", "Upload-Offset", "Upload-Length", "Upload-Defer-Length",
        "Upload-Metadata", "Upload-Concat", "Upload-Expires", "Tus-Resumable",
        "Tus-Version", "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm",
    ]

    def __init__(self, config: Config, uploads: UploadService) -> None:
        self.uploads = uploads
        self.store = uploads.store
        # The mount is fixed once routes are installed; every other setting
        # is read from self.config per request, so a reloaded config applies.
        self.mount = config.tus.path
        self.config = config
        extensions = [
            "creation", "creation-with-upload", "creation-defer-length", "expiration",
            "checksum", "termination", "concatenation", "concatenation-unfinished",
        ]
        if trailersSupported():
            extensions.insert(5, "checksum-trailer")
        self.extensions = extensions

    def reconfigure(self, config: Config) -> None:
        self.config = config

    def routes(self) -> Sequence[Route]:
        item = self.mount + "/<upload_id>"
        return [
            *(Route(path, ("OPTIONS",), self.options) for path in (self.mount, self.mount + "/")),
            *(Route(path, ("POST",), self.created, body=self.creationSink)
              for path in (self.mount, self.mount + "/")),
            Route(item, ("OPTIONS",), self.options),
            Route(item, ("HEAD", "GET"), self.headOrGet),
            Route(item, ("PATCH",), self.patched, body=self.patchSink),
            Route(item, ("DELETE",), self.delete),
        ]

    # -- body requests: decided when the headers end ---------------------------

    def patchSink(self, request: StreamingRequest, upload_id: str) -> BodySink:
        """
        PATCH: check the request, lock the upload, check the write against
        it, and stream the body in.
        """
        checkVersion(request)
        if mediaType(request) != OFFSET_STREAM:
            raise UnsupportedMediaType(f"Content-Type must be {OFFSET_STREAM}")
        offset = requiredOffset(request)
        checksum = parseChecksum(header(request, "upload-checksum"))
        newLength = parseCount("Upload-Length", header(request, "upload-length"))
        upload = self.uploads.open(upload_id, TUS_FAMILY, request.principal)
        try:
            plan = self._plan(request, upload.record, offset, newLength, checksum)
        except BaseException:
            upload.close()
            raise
        return self.uploads.write(upload, plan, request.bodyProducer, request.bodyLength, request)

    def _plan(self, request: StreamingRequest, record: UploadRecord, offset: int,
              newLength: Optional[int], checksum: Optional[Checksum]) -> WritePlan:
        """
        Check a write against the upload (the caller holds its lock): tus's
        rules for offsets, lengths and limits.
        """
        if record.extra.get("concat") == "final":
            raise Forbidden("a final concatenated upload cannot be patched")
        self.uploads.checkOffset(record, offset)
        length = record.length
        maxSize = self.uploads.maxSizeFor(request.principal)
        if newLength is not None:
            if length is not None and newLength != length:
                raise BadRequest("Upload-Length cannot change once set")
            if newLength < record.offset:
                raise BadRequest("Upload-Length is below the current offset")
            self.uploads.checkSize(newLength, principal=request.principal)
            length = newLength
        if length is not None:
            limit: Optional[int] = length - offset
        elif maxSize:
            limit = maxSize - offset
        else:
            limit = None
        bodyLength = request.bodyLength
        if limit is not None and bodyLength is not None and bodyLength > limit:
            raise TooLarge(f"the body runs {bodyLength - limit} bytes past the upload's length")
        final = length

        def recorded(end: int) -> Any:
            return self.uploads.advanceTo(end, final, since=offset)

        def verifyTrailer(outcome: BodyOutcome) -> Optional["Deferred[None]"]:
            return self._verifyTrailer(record.id, offset, outcome)

        # Only a body that can neither fail a checksum nor overflow may have
        # its offset recorded before it ends.
        return WritePlan(offset, limit, recorded, checksum=checksum,
                         verify=None if checksum is not None else verifyTrailer,
                         checkpoints=True)

    def _verifyTrailer(self, uploadId: str, offset: int, outcome: BodyOutcome) -> Optional["Deferred[None]"]:
        """
        checksum-trailer: a checksum announced after the bytes; hash what
        was written, in the disk pool, and refuse the body if it differs.
        """
        announced = outcome.trailers.getRawHeaders(b"upload-checksum")
        if not (outcome.complete and announced and "checksum-trailer" in self.extensions):
            return None
        checksum = parseChecksum(announced[0].decode("latin-1").strip())
        assert checksum is not None
        path = self.store.dataPath(uploadId)

        def compare(actual: bytes) -> None:
            if actual != checksum.expected:
                raise ChecksumMismatch("Upload-Checksum trailer does not match the body")

        d = self.uploads.disk.run(_hashWritten, path, checksum.digest, offset, outcome.written)
        return d.addCallback(compare)

    def creationSink(self, request: StreamingRequest) -> BodySink:
        """
        POST: create an upload, and -- with creation-with-upload -- stream the
        body into it as its first PATCH.
        """
        checkVersion(request)
        if request.bodyLength != 0 and mediaType(request) != OFFSET_STREAM:
            # A body is the upload's first bytes (creation-with-upload) and
            # must say so; anything else would be silently dropped.
            raise UnsupportedMediaType(f"a creation body must be {OFFSET_STREAM}")
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
        self.uploads.checkSize(length, principal=request.principal)
        rawMetadata, metadata = readMetadata(request, self.config.limits.max_metadata_size)
        withUpload = request.bodyLength != 0
        checksum = parseChecksum(header(request, "upload-checksum")) if withUpload else None
        bodyLength = request.bodyLength
        if withUpload and length is not None and bodyLength is not None and bodyLength > length:
            # Refused before anything is created: a refused request leaves no upload behind.
            raise TooLarge(f"the body runs {bodyLength - length} bytes past the upload's length")
        extra: dict = {"tus_metadata": rawMetadata}
        if concat == "partial":
            extra["concat"] = "partial"
        created = self.uploads.create(TUS, length, metadata=metadata, extra=extra,
                                      principal=request.principal)
        if not withUpload:
            return LateSink(created.addCallback(lambda r: RecordSink(Created(r, False))),
                            request.bodyProducer)

        def startWriting(record: UploadRecord) -> BodySink:
            upload = self.store.open(record.id)
            try:
                plan = self._plan(request, upload.record, 0, None, checksum)
            except BaseException:
                upload.close()
                raise
            sink = self.uploads.write(upload, plan, request.bodyProducer, request.bodyLength, request)

            def discardRefused(failure: Failure) -> Any:
                # The body was refused (a checksum mismatch, a chunked body
                # past the length): the request fails, so the upload it
                # created goes too -- its id was never told to anyone.
                if not failure.check(UploadError):
                    return failure
                d = self.uploads.discard(record)
                d.addErrback(lambda f: self.log.failure("discarding a refused creation", f))
                return d.addCallback(lambda _: failure)

            return MappedSink(sink, lambda written: Created(written, True), failed=discardRefused)

        return LateSink(created.addCallback(startWriting), request.bodyProducer)

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
                part = self.uploads.find(uploadId, TUS_FAMILY, request.principal)
            except UploadNotFound:
                raise BadRequest(f"partial upload {url!r} does not exist") from None
            if part.extra.get("concat") != "partial":
                raise BadRequest(f"{url!r} is not a partial upload")
            if part.length is None:
                raise BadRequest(f"partial upload {url!r} has no length yet")
            total += part.length
            parts.append(uploadId)
        self.uploads.checkSize(total, "the partial uploads together", request.principal)
        rawMetadata, metadata = readMetadata(request, self.config.limits.max_metadata_size)
        extra = {"tus_metadata": rawMetadata, "concat": "final", "parts": parts}
        created = self.uploads.create(TUS, total, metadata=metadata, extra=extra, expires=False,
                                      principal=request.principal)
        created.addCallback(lambda record: self._assembleIfReady(record.id))
        return LateSink(created.addCallback(lambda r: RecordSink(Created(r, False))), request.bodyProducer)

    def _assembleIfReady(self, uploadId: str) -> "Deferred[UploadRecord]":
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
        d = self.uploads.disk.run(_copyParts, sources, upload)
        d.addErrback(releasing, upload)
        length = record.length or 0
        return d.addCallback(lambda _: self.uploads.commit(
            upload, self.uploads.advanceTo(length, length, since=0)))

    # -- routes ----------------------------------------------------------------

    def options(self, request: Any, upload_id: Optional[str] = None) -> bytes:
        setHeader(request, "Tus-Resumable", TUS_VERSION)
        request.setResponseCode(200)
        setHeader(request, "Tus-Version", TUS_VERSION)
        setHeader(request, "Tus-Extension", ",".join(self.extensions))
        setHeader(request, "Tus-Checksum-Algorithm", ",".join(CHECKSUMS))
        if self.uploads.maxSize:
            setHeader(request, "Tus-Max-Size", self.uploads.maxSize)
        return b""

    async def created(self, request: Any) -> bytes:
        created: Created = await request.bodySink.result()
        record = created.record
        request.setResponseCode(201)
        location = f"{self.mount}/{record.id}"
        if not self.config.tus.relative_location:
            location = baseURL(request, self.config.network.trust_proxy) + location
        setHeader(request, "Location", location)
        if created.withUpload:
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
            setHeader(request, "Tus-Resumable", TUS_VERSION)
            return self._download(request, upload_id)
        checkVersion(request)
        record = self.uploads.find(upload_id, TUS_FAMILY, request.principal)
        if record.extra.get("concat") == "final" and record.state == ACTIVE:
            return self._assembleIfReady(upload_id).addCallback(
                lambda assembled: self._headAnswer(request, assembled))
        return self._headAnswer(request, record)

    def _headAnswer(self, request: Any, record: UploadRecord) -> bytes:
        concat = record.extra.get("concat")
        answerHead(request, record, offset=not (concat == "final" and record.state != COMPLETE))
        if concat == "partial":
            setHeader(request, "Upload-Concat", "partial")
        elif concat == "final":
            urls = " ".join(f"{self.mount}/{p}" for p in record.extra["parts"])
            setHeader(request, "Upload-Concat", f"final;{urls}")
        return b""

    def _download(self, request: Any, uploadId: str) -> Any:
        """
        GET of a finished upload (tusd's extension): the bytes, with byte
        ranges, named and typed from its metadata -- always as an
        attachment, so an upload can never run as a page of this origin.
        """
        if not self.config.tus.download:
            raise MethodNotAllowed("downloads are disabled")
        record = self.uploads.find(uploadId, TUS_FAMILY, request.principal)
        if record.state != COMPLETE:
            raise Conflict("the upload is not finished", headers={"Upload-Offset": str(record.offset)})
        resource = File(self.store.dataPath(uploadId))
        resource.type = safeContentType(record.metadata.get("filetype") or record.metadata.get("contentType"))
        resource.encoding = None
        setHeader(request, "Content-Disposition", attachment(record.metadata.get("filename")))
        setHeader(request, "X-Content-Type-Options", "nosniff")
        return resource

    def delete(self, request: Any, upload_id: str) -> "Deferred[bytes]":
        checkVersion(request)

        def terminated(_: bool) -> bytes:
            request.setResponseCode(204)
            return b""

        return self.uploads.terminate(upload_id, TUS_FAMILY, request.principal).addCallback(terminated)


def _hashWritten(path: str, digest: Any, offset: int, length: int) -> bytes:
    """The digest of C{length} bytes of C{path} from C{offset}.  Blocking."""
    with open(path, "rb") as f:
        f.seek(offset)
        remaining = length
        while remaining:
            block = f.read(min(remaining, 1 << 20))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
    return bytes(digest.digest())


def _copyParts(sources: List[str], upload: OpenUpload) -> None:
    """Concatenate the partials' files into the final's.  Blocking."""
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


# RFC 6838: each name starts with a letter or digit (so "../.." is no type).
_TOKEN_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]{0,126}\Z")


def safeContentType(value: Optional[str]) -> str:
    """A download's type from metadata, if it is a plain media type."""
    if value and _TOKEN_TYPE.match(value):
        return value
    return "application/octet-stream"


def attachment(filename: Optional[str]) -> str:
    """A Content-Disposition that names the file but never renders it."""
    # The completed area's rule: one component, no control characters, no
    # leading dots (so never "." or ".."), at most 200 bytes.
    name = sanitizeFilename(filename, "")
    if not name:
        return "attachment"
    ascii = name.encode("ascii", "replace").decode("ascii") or "download"
    return f"attachment; filename=\"{ascii}\"; filename*=UTF-8''{quote(name)}"
