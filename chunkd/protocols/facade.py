"""
The chunked-upload facade (protocols.md section 4): the three endpoints a
camera app that "speaks tus" expects from a server offering chunked
uploads, plus a health check for the load balancer.

    POST  <path>             create an upload (Upload-Length) -> 201, Location
    HEAD  <path>/<id>        where the upload stands, as in tus
    PATCH <path>/<id>        a chunk at Upload-Offset, raw or multipart/form-data
    POST  <path>/finalize    JSON {uploadId, filename, uploadToken} -> sha256, publish
    GET   /health            {"status": "OK"}, or 503 with a reason

The chunks go through the same upload layer as tus, speaking tus's wire
grammar (L{chunkd.protocols.tuswire}).  What the facade adds is the
finalize step, and it must answer at once even for a multi-gigabyte file:
the facade's uploads are sequential, so their writes feed the upload's
running sha256 (L{chunkd.hashes}) and publishing (L{chunkd.publish}) reads
the file again only for what the running hash has not seen (after a
restart, in another process).

Finalizing needs a token (L{chunkd.tokens}): the one chunkd issued when the
upload was created, or one the application's backend minted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from chunkd.complete import sanitizeFilename
from chunkd.config import Config
from chunkd.errors import (
    BadRequest,
    OffsetMismatch,
    TooLarge,
    UnsupportedMediaType,
    UploadGone,
    UploadLocked,
)
from chunkd.health import StorageHealth
from chunkd.multipart import MultipartSink, boundaryOf
from chunkd.protocols import tuswire
from chunkd.routes import Route
from chunkd.sinks import BodyOutcome, FileSink, LateSink, RecordSink
from chunkd.store import OpenUpload, UploadRecord
from chunkd.streaming import BodySink, StreamingRequest
from chunkd.tokens import UploadTokens
from chunkd.uploads import UploadService, WritePlan
from chunkd.web import header, setHeader

#: the protocol name in upload records: the facade serves only its own uploads.
FACADE = "facade"
#: raw chunk bodies: tus's type, and the plain one the seed's servers accept.
RAW_TYPES = (tuswire.OFFSET_STREAM, "application/octet-stream")
#: the multipart part that carries a chunk's bytes.
CHUNK_FIELD = "chunk"
#: room for multipart framing (boundaries, part headers, small fields) on top
#: of the chunk itself when a Content-Length is checked up front.
MULTIPART_ALLOWANCE = 64 * 1024


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
    except RecursionError:
        # A few kilobytes of "[[[[..." exhaust the decoder's recursion:
        # the client's doing, answered as such.
        raise BadRequest("the body is nested too deeply") from None
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



class _MultipartChunk:
    """
    A multipart PATCH body, with the upload it locks.

    The upload is opened when the headers end; the chunk's L{FileSink}
    releases it once the chunk is recorded.  If the body never reaches a
    C{chunk} part, nothing else would, so this does.  It also tells a
    malformed body (the parser gave up: nothing is kept) from a dropped
    connection (as in tus, every byte that landed counts).
    """

    def __init__(self, boundary: bytes, upload: OpenUpload) -> None:
        self.upload = upload
        self.fileSink: Optional[FileSink] = None
        self.opened = False
        self.connectionLost = False
        self.parser = MultipartSink(boundary, CHUNK_FIELD, self._openFile)

    def _openFile(self, fields: Dict[str, str]) -> BodySink:
        assert self.fileSink is not None
        self.opened = True
        return self.fileSink

    def malformed(self, outcome: BodyOutcome) -> None:
        """
        The upload layer's last check: the parser gave up inside the chunk
        (not the connection, nor a full disk), so nothing of it is kept.
        """
        if not outcome.complete and not self.connectionLost and outcome.error is None:
            raise BadRequest("the multipart body is malformed")

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


class FacadeProtocol:
    """
    The chunked-upload facade at C{config.uploads.path}, and C{/health}.
    """

    name = FACADE
    log = Logger()
    exposedHeaders = [
        "Location", "Upload-Offset", "Upload-Length", "Upload-Metadata", "Upload-Expires",
        "Upload-Token", "Tus-Resumable",
    ]

    def __init__(self, config: Config, uploads: UploadService) -> None:
        self.uploads = uploads
        self.store = uploads.store
        self.publisher = uploads.publisher
        # Routes and the completed area are fixed for the process's life;
        # everything else follows the config, which a reload may replace.
        self.mount = config.uploads.path
        self._lastHealth: Optional[str] = None
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """
        Take a (re)loaded config: token rules and the health floor apply
        to the next request.
        """
        self.config = config
        self.settings = config.uploads
        self.tokens = UploadTokens(self.settings.token_secret, self.settings.token_ttl,
                                   self.settings.issue_tokens, self.store.clock)
        self.health = StorageHealth(
            [("storage", self.store.uploads), ("completed area", self.publisher.directory)],
            self.settings.min_free_space, self.uploads.disk)

    @property
    def hashes(self) -> Any:
        return self.uploads.hashes

    @property
    def recomputed(self) -> int:
        """How many publications had to hash file bytes again (tests, the log)."""
        return int(self.uploads.hashes.recomputed)

    def routes(self) -> Sequence[Route]:
        item = self.mount + "/<upload_id>"
        return [
            *(Route(path, ("POST",), self.created, body=self.creationSink)
              for path in (self.mount, self.mount + "/")),
            Route(self.mount + "/finalize", ("POST",), self.finalize),
            Route(item, ("HEAD",), self.head),
            Route(item, ("PATCH",), self.patched, body=self.patchSink),
            # At the root whatever the mount: load balancers probe a fixed path.
            Route("/health", ("GET", "HEAD"), self.healthCheck, label="other", public=True),
        ]

    def _tokenOf(self, request: Any) -> Optional[str]:
        return header(request, "x-upload-token")

    # -- body requests: decided when the headers end ---------------------------

    def creationSink(self, request: StreamingRequest) -> BodySink:
        """
        POST: create an upload of C{Upload-Length} bytes.  A body, if any,
        is ignored (the facade has no creation-with-upload), and the
        answer carries no Upload-Offset, so a tus client starts at 0.
        """
        tuswire.checkVersion(request, required=False)
        length = tuswire.parseCount("Upload-Length", header(request, "upload-length"))
        if length is None:
            raise BadRequest("Upload-Length is required")
        self.uploads.checkSize(length, principal=request.principal)
        rawMetadata, metadata = tuswire.readMetadata(request, self.config.limits.max_metadata_size)
        token, extra = self.tokens.issueFor()
        extra["tus_metadata"] = rawMetadata
        created = self.uploads.create(FACADE, length, metadata=metadata, extra=extra,
                                      principal=request.principal)
        return LateSink(created.addCallback(lambda record: RecordSink(Created(record, token))),
                        request.bodyProducer)

    def patchSink(self, request: StreamingRequest, upload_id: str) -> BodySink:
        """
        PATCH: check everything that can be checked before a byte is
        written -- body type, offset, size, token -- then lock the upload
        and stream the chunk into its file.
        """
        tuswire.checkVersion(request, required=False)
        boundary = self._boundaryOf(request)
        offset = tuswire.requiredOffset(request)
        checksum = tuswire.parseChecksum(header(request, "upload-checksum"),
                                 "Upload-Checksum does not match the chunk")
        self._checkDeclaredSize(request, boundary)
        record = self.uploads.find(upload_id, FACADE, request.principal)
        if record.published is not None:
            raise UploadGone("the upload was finalized")
        if self.settings.patch_requires_token:
            self.tokens.check(record, self._tokenOf(request))
        upload = self.store.open(upload_id)
        try:
            record = upload.record
            self.uploads.checkOffset(record, offset)
            assert record.length is not None  # the facade always knows the length
            limit, tooLarge = self._limitOf(record, offset)
            length = record.length
            multipart = _MultipartChunk(boundary, upload) if boundary is not None else None
            plan = WritePlan(
                offset, limit,
                lambda end: self.uploads.advanceTo(end, length, completes=False, since=offset),
                overflow=TooLarge(tooLarge),
                checksum=checksum,
                verify=multipart.malformed if multipart is not None else None,
                runningHash=True,
            )
            # A multipart body is larger than its chunk: only the raw one
            # can be refused by its Content-Length.
            fileSink = self.uploads.write(upload, plan, request.bodyProducer,
                                          request.bodyLength if multipart is None else None, request)
        except BaseException:
            upload.close()
            raise
        if multipart is None:
            return fileSink
        multipart.fileSink = fileSink
        return multipart

    def _boundaryOf(self, request: StreamingRequest) -> Optional[bytes]:
        """
        C{None} for a raw body, the boundary for a multipart one.
        """
        base = tuswire.mediaType(request)
        if base in RAW_TYPES:
            return None
        if base == "multipart/form-data":
            return boundaryOf(header(request, "content-type"))
        raise UnsupportedMediaType(
            f"Content-Type must be {tuswire.OFFSET_STREAM} or multipart/form-data"
        )

    def _checkDeclaredSize(self, request: StreamingRequest, boundary: Optional[bytes]) -> None:
        """
        Refuse a Content-Length that is too large before touching the
        upload.  A chunked body is counted as it streams (the write's
        limit) instead.
        """
        chunkMax = self.settings.max_chunk_size
        declared = request.bodyLength
        if not chunkMax or declared is None:
            return
        allowed = chunkMax if boundary is None else chunkMax + MULTIPART_ALLOWANCE
        if declared > allowed:
            raise TooLarge(f"a chunk may be at most {chunkMax} bytes")

    def _limitOf(self, record: UploadRecord, offset: int) -> "tuple[int, str]":
        """
        The most bytes this chunk may bring, and why.
        """
        assert record.length is not None
        remaining = record.length - offset
        chunkMax = self.settings.max_chunk_size
        if chunkMax and chunkMax < remaining:
            return chunkMax, f"a chunk may be at most {chunkMax} bytes"
        return remaining, "the chunk runs past Upload-Length"

    # -- routes ------------------------------------------------------------------

    async def created(self, request: Any) -> bytes:
        created: Created = await request.bodySink.result()
        record = created.record
        request.setResponseCode(201)
        setHeader(request, "Location", f"{self.mount}/{record.id}")
        if created.token is not None:
            setHeader(request, "Upload-Token", created.token)
        tuswire.expiresHeader(request, record)
        return b""

    async def patched(self, request: Any, upload_id: str) -> bytes:
        return tuswire.answerWrite(request, await request.bodySink.result())

    def head(self, request: Any, upload_id: str) -> bytes:
        tuswire.checkVersion(request, required=False)
        record = self.uploads.find(upload_id, FACADE, request.principal)
        if self.settings.patch_requires_token:
            self.tokens.check(record, self._tokenOf(request))
        return tuswire.answerHead(request, record)

    async def finalize(self, request: Any) -> bytes:
        """
        Check the token, then publish the finished upload under its
        sanitized name and answer with its size and sha256.  A repeat gets
        the first answer; a wrong token changes nothing.
        """
        tuswire.checkVersion(request, required=False)
        body = await request.bodySink.result()
        asked = parseFinalize(body, self._tokenOf(request))
        record = self.uploads.find(asked.uploadId, FACADE, request.principal)
        self.tokens.check(record, asked.token)
        published = await self._published(record, asked.filename)
        return _jsonBody(request, 200, _answerOf(published))

    async def _published(self, record: UploadRecord, filename: str) -> UploadRecord:
        if record.published is not None:
            return record
        if record.length is None or record.offset != record.length:
            raise OffsetMismatch(
                f"the upload is not complete: {record.offset} of {record.length} bytes",
                headers={"Upload-Offset": str(record.offset)},
            )
        try:
            upload = self.store.open(record.id)
        except UploadGone:
            # Its data moved away since we read the record: another
            # finalize got there first, or one was cut short.
            again = self.store.live(self.store.get(record.id))
            if again.published is None and again.publishing is None:
                raise UploadLocked("the upload is being finalized") from None
            return await self.publisher.adopt(again)
        try:
            name = sanitizeFilename(filename, fallback=f"upload-{record.id}")
            return await self.publisher.publish(upload, name, record.length, filename)
        finally:
            upload.close()

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


def _answerOf(record: UploadRecord) -> Dict[str, Any]:
    """
    Finalize's answer, from the publication: a repeat is byte for byte the
    first.
    """
    published = record.published
    assert published is not None
    return {"videoId": record.id, "status": "complete", "size": published.size,
            "checksum": f"sha256:{published.sha256}"}


def _jsonBody(request: Any, status: int, value: Dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    setHeader(request, "Content-Type", "application/json")
    setHeader(request, "Cache-Control", "no-store")
    return json.dumps(value).encode("utf-8")
