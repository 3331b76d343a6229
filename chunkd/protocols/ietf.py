"""
Resumable Uploads for HTTP (draft-ietf-httpbis-resumable-upload), the IETF
successor of tus, at every interop version from 3 to 8, over the same
uploads, disk path, limits, expiry, hooks, auth and metrics as tus: an
upload created here is a tus upload to a tus client and back.

Where it is served: at its own mount (C{ietf.path}, default C{/rufh}), a
request without C{Upload-Draft-Interop-Version} is served as the newest
version (the final RFC drops that header); at the tus mount, a request
carrying it is routed here (L{chunkd.routes.RouteTable.divert}).  The
version is echoed; an unknown one is a 400.

What differs between interop versions (drafts in brackets), as a server
sees it -- everything else is the same:

  - 3 (-01): completeness is C{Upload-Incomplete} (C{?1} while more
    follows), not C{Upload-Complete}; an append without it completes the
    upload.  104 announces C{Location}.
  - 4 (-02): C{Upload-Complete: ?1/?0} (an append without it completes).
  - 5 (-03): 104s may also report C{Upload-Offset} while a body streams;
    offset retrieval may answer 200 (chunkd answers 204 in every version).
  - 6 (-04, -05): appends must be C{Content-Type:
    application/partial-upload} (before: any type); C{Upload-Limit} with
    C{max-size}, C{min-size}, C{max-append-size}, C{min-append-size},
    C{expires}; problem documents (C{application/problem+json}) for a
    mismatching offset (409) and for appending to a completed upload
    (400 C{#completed-upload}); C{Upload-Length} from -05.
  - 7 (-06 .. -08): the C{expires} key is C{max-age}; 400
    C{#inconsistent-upload-length}; an append must say C{Upload-Complete}.
  - 8 (-09 .. and the RFC): C{Upload-Limit} on OPTIONS is required
    (C{min-size=0} when there is no limit); appending more to a completed
    upload is an inconsistent length (the C{completed-upload} type is
    gone), while an empty completing append is answered again as it was
    the first time; 104 never replaces C{100 Continue}; GET of the upload
    resource answers as HEAD.

Each version's facts come from reading drafts -01 to -11 and the latest
text; tus-js-client 4.3.1 (interop 5 and 6) decides completion from
C{Upload-Offset == Upload-Length} on HEAD, so HEAD carries
C{Upload-Length} whenever it is known, in every version.  Its creation
sends tus's C{Upload-Metadata} and C{Upload-Defer-Length}, which are
taken as tus takes them.

Status codes (every version): creation 201 with C{Location} (also when the
request completed the upload), append 204, offset retrieval 204, DELETE
204, an offset mismatch 409 with C{Upload-Offset} and
C{Upload-Complete: ?0}, inconsistent lengths 400, a limit exceeded 413
with C{Upload-Limit}, a second append while one runs 423 (tus's "locked":
the lock is the store's, across processes).

Interim responses: 104 with C{Location} and C{Upload-Limit} as soon as the
upload exists (before a byte of its body is taken), then 104 with
C{Upload-Offset} each time a checkpoint makes more of the body durable,
no more often than C{ietf.progress_interval} (a body without
Content-Length has no checkpoints, so no progress 104s).  Offsets reported
are always durable ones.

Integrity (RFC 9530): C{Content-Digest} (sha-256, sha-512) is checked on
the bytes as they stream -- a body that does not match records nothing;
C{Repr-Digest} sent at creation is checked when the upload completes, and
C{Want-Repr-Digest} is answered on the completing response, from the file
(one more read of it; sha-256 and sha-512).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import http_sf
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from chunkd.config import Config
from chunkd.errors import (
    BadRequest,
    ChecksumMismatch,
    Forbidden,
    OffsetMismatch,
    Problem,
    TooLarge,
    UnsupportedMediaType,
    UploadError,
)
from chunkd.informational import sendInformational
from chunkd.protocols.tuswire import TUS_FAMILY, readMetadata
from chunkd.routes import Route
from chunkd.sinks import BodyOutcome, LateSink, MappedSink, RecordSink
from chunkd.store import ACTIVE, COMPLETE, UploadRecord
from chunkd.streaming import BodySink, StreamingRequest
from chunkd.uploads import Checksum, UploadService, WritePlan
from chunkd.web import baseURL, header, setHeader

IETF = "ietf"
PARTIAL_UPLOAD = "application/partial-upload"
PROBLEM_TYPES = "https://iana.org/assignments/http-problem-types#"
DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}


@dataclass(frozen=True)
class Version:
    """
    What one interop version asks of a server (see the module docstring).

    @ivar number: the interop version, or C{None} for requests without the
        header (served as the newest version, echoing nothing).
    """

    number: Optional[int]
    incompleteHeader: bool = False
    appendMustSayComplete: bool = True
    progress: bool = True
    partialUpload: bool = True
    limits: bool = True
    expiresKey: str = "max-age"
    problems: bool = True
    lengthProblem: bool = True
    completedProblem: bool = False

    @property
    def completeName(self) -> str:
        return "Upload-Incomplete" if self.incompleteHeader else "Upload-Complete"


_BEFORE_7: Dict[str, Any] = {"appendMustSayComplete": False, "lengthProblem": False}
_BEFORE_6: Dict[str, Any] = dict(_BEFORE_7, partialUpload=False, limits=False, problems=False)
VERSIONS = {
    3: Version(3, incompleteHeader=True, progress=False, **_BEFORE_6),
    4: Version(4, progress=False, **_BEFORE_6),
    5: Version(5, **_BEFORE_6),
    6: Version(6, expiresKey="expires", completedProblem=True, **_BEFORE_7),
    7: Version(7, completedProblem=True),
    8: Version(8),
}
NEWEST = VERSIONS[8]
#: what a request without Upload-Draft-Interop-Version gets at the own mount
RFC = Version(None)


@dataclass
class Created:
    """What a creation hands its route once its body is dealt with."""

    record: UploadRecord
    location: str
    reprDigests: Dict[str, bytes]


class IetfProtocol:
    """
    Resumable Uploads for HTTP at C{config.ietf.path} (and, by diversion,
    at the tus mount for requests that name an interop version).
    """

    name = IETF
    log = Logger()
    exposedHeaders = [
        "Location", "Upload-Offset", "Upload-Complete", "Upload-Incomplete", "Upload-Length",
        "Upload-Limit", "Upload-Draft-Interop-Version", "Repr-Digest",
    ]

    def __init__(self, config: Config, uploads: UploadService) -> None:
        self.uploads = uploads
        self.store = uploads.store
        self.mount = config.ietf.path
        self.tusMount = config.tus.path if config.tus.enabled else None
        self.config = config

    def reconfigure(self, config: Config) -> None:
        self.config = config

    def routes(self) -> Sequence[Route]:
        item = self.mount + "/<upload_id>"
        collection = (self.mount, self.mount + "/")
        return [
            *(Route(path, ("OPTIONS",), self.options) for path in collection),
            *(Route(path, ("POST", "PUT"), self.created, body=self.creationSink) for path in collection),
            Route(item, ("OPTIONS",), self.options),
            Route(item, ("HEAD", "GET"), self.head),
            Route(item, ("PATCH",), self.appended, body=self.appendSink),
            Route(item, ("DELETE",), self.delete),
        ]

    # -- the version, the header grammar -------------------------------------------

    def version(self, request: Any) -> Version:
        """
        The interop version the request names (echoed on the answer), or
        the RFC's rules when it names none.

        @raise BadRequest: a version chunkd does not speak.
        """
        value = header(request, "upload-draft-interop-version")
        if value is None:
            return RFC
        number = _integer(value)
        version = VERSIONS.get(number) if number is not None else None
        if version is None:
            raise BadRequest(f"Upload-Draft-Interop-Version {value!r} is not one of "
                             f"{', '.join(map(str, VERSIONS))}",
                             headers={"Upload-Draft-Interop-Version": str(NEWEST.number)})
        setHeader(request, "Upload-Draft-Interop-Version", version.number)
        return version

    def completeness(self, request: Any, version: Version) -> Optional[bool]:
        """
        Whether the request says it completes the upload (C{None}: it does
        not say, or says it in a way the version ignores).
        """
        value = _boolean(header(request, version.completeName.lower()))
        if value is None:
            return None
        return not value if version.incompleteHeader else value

    def requireCompleteness(self, request: Any, version: Version) -> bool:
        complete = self.completeness(request, version)
        if complete is None:
            raise BadRequest(f"{version.completeName} (?0 or ?1) is required")
        return complete

    def setComplete(self, request: Any, version: Version, complete: bool) -> None:
        value = (not complete) if version.incompleteHeader else complete
        setHeader(request, version.completeName, "?1" if value else "?0")

    def limits(self, version: Version, record: Optional[UploadRecord], principal: Any) -> Optional[str]:
        """
        The C{Upload-Limit} value: the config's limits, the token's size
        limit, and the upload's remaining lifetime.
        """
        if not version.limits and version.number is not None:
            return None
        settings = self.config.ietf
        limits: Dict[str, int] = {}
        maxSize = self.uploads.maxSizeFor(principal)
        if maxSize:
            limits["max-size"] = maxSize
        limits["min-size"] = settings.min_size
        if settings.max_append_size:
            limits["max-append-size"] = settings.max_append_size
        if settings.min_append_size:
            limits["min-append-size"] = settings.min_append_size
        if record is None:
            if self.config.janitor.expire_after:
                limits[version.expiresKey] = int(self.config.janitor.expire_after)
        elif record.state == ACTIVE and record.expires is not None:
            limits[version.expiresKey] = max(0, int(record.expires - self.store.clock()))
        return str(http_sf.ser({k: (v, {}) for k, v in limits.items()}))

    def location(self, request: Any, uploadId: str) -> str:
        """
        The upload resource, under the mount the client used (a diverted
        request came through the tus mount, and keeps using it).
        """
        mount = self.mount
        if request.routedPath is not None and self.tusMount is not None:
            mount = self.tusMount
        return baseURL(request, self.config.network.trust_proxy) + f"{mount}/{uploadId}"

    # -- creation -----------------------------------------------------------------

    def creationSink(self, request: StreamingRequest) -> BodySink:
        """
        POST or PUT with C{Upload-Complete}: create the upload, announce it
        with a 104 before taking any body, and stream the body into it.
        """
        version = self.version(request)
        complete = self.requireCompleteness(request, version)
        principal = request.principal
        length = self._declaredLength(request, version, complete, 0)
        if length is not None and length < self.config.ietf.min_size:
            raise BadRequest(f"the upload is smaller than min-size ({self.config.ietf.min_size} bytes)")
        self._checkAppendSize(request, version, principal)
        self.uploads.checkSize(length, "the upload's length", principal)
        # Refused before anything is created: a body that cannot fit.
        maxSize = self.uploads.maxSizeFor(principal)
        room = length if length is not None else (maxSize or None)
        if room is not None and request.bodyLength is not None and request.bodyLength > room:
            raise self._lengthError(version, f"the body runs {request.bodyLength - room} bytes past the upload's length")
        contentDigest = _contentDigest(request)
        reprDigest = _digestHeader(request, "repr-digest")
        wanted = _wantedDigests(request)
        # tus-js-client's IETF modes send tus's metadata; kept as tus keeps it.
        rawMetadata, metadata = readMetadata(request, self.config.limits.max_metadata_size)
        extra: Dict[str, Any] = {"ietf": version.number or 0, "tus_metadata": rawMetadata}
        if reprDigest is not None:
            extra["repr_digest"] = [reprDigest[0], base64.b64encode(reprDigest[1]).decode("ascii")]
        created = self.uploads.create(IETF, length, metadata=metadata, extra=extra, principal=principal)

        def announce(record: UploadRecord) -> BodySink:
            location = self.location(request, record.id)
            interim = [("Location", location)]
            limits = self.limits(version, record, principal)
            if limits is not None:
                interim.append(("Upload-Limit", limits))
            self._interim(request, version, interim)
            upload = self.store.open(record.id)
            try:
                plan = self._plan(request, version, upload.record, 0, complete, contentDigest)
            except BaseException:
                upload.close()
                raise
            sink = self.uploads.write(upload, plan, request.bodyProducer, request.bodyLength, request)
            return MappedSink(sink, lambda written: self._afterCompletion(written, location, wanted),
                              self._refusedCreation(record))

        return LateSink(created.addCallback(announce), request.bodyProducer)

    async def created(self, request: Any) -> bytes:
        created: Created = await request.bodySink.result()
        version = self.version(request)
        record = created.record
        request.setResponseCode(201)
        setHeader(request, "Location", created.location)
        setHeader(request, "Upload-Offset", record.offset)
        self.setComplete(request, version, record.state == COMPLETE)
        limits = self.limits(version, record, request.principal)
        if limits is not None and record.state != COMPLETE:
            setHeader(request, "Upload-Limit", limits)
        _reprDigestHeader(request, created.reprDigests)
        return b""

    # -- append -------------------------------------------------------------------

    def appendSink(self, request: StreamingRequest, upload_id: str) -> BodySink:
        """
        PATCH with C{Upload-Offset} and C{Upload-Complete}: check it against
        the upload under its lock, then stream the body in.
        """
        version = self.version(request)
        if version.partialUpload and _mediaType(request) != PARTIAL_UPLOAD:
            raise UnsupportedMediaType(f"Content-Type must be {PARTIAL_UPLOAD}")
        complete = self.completeness(request, version)
        if complete is None:
            if version.appendMustSayComplete:
                raise BadRequest(f"{version.completeName} (?0 or ?1) is required")
            complete = True  # drafts -01 to -05: an append that does not say so completes
        offset = _integer(header(request, "upload-offset") or "")
        if offset is None:
            raise BadRequest("Upload-Offset (a non-negative integer) is required")
        principal = request.principal
        self._checkAppendSize(request, version, principal)
        contentDigest = _contentDigest(request)
        wanted = _wantedDigests(request)
        upload = self.uploads.open(upload_id, TUS_FAMILY, principal)
        try:
            record = upload.record
            if record.extra.get("concat") == "final":
                # Made of its parts by tus; nothing is appended to it.
                raise Forbidden("a final concatenated upload cannot be appended to")
            if record.state == COMPLETE:
                if complete and offset == record.offset and request.bodyLength == 0:
                    # The answer to the completing append was lost; this one
                    # asks again: answer it again (the draft allows the replay).
                    upload.close()
                    return RecordSink(Created(record, self.location(request, record.id), {}))
                raise self._completedError(version, record, request.bodyLength)
            if offset != record.offset:
                raise self._offsetError(version, record, offset)
            length = self._declaredLength(request, version, complete, offset)
            if length is not None and record.length is not None and length != record.length:
                raise self._lengthError(version, "the length differs from the upload's")
            if length is not None:
                self.uploads.checkSize(length, "the upload's length", principal)
            plan = self._plan(request, version, record, offset, complete, contentDigest,
                              length if length is not None else record.length)
        except BaseException:
            upload.close()
            raise
        location = self.location(request, record.id)
        sink = self.uploads.write(upload, plan, request.bodyProducer, request.bodyLength, request)
        return MappedSink(sink, lambda written: self._afterCompletion(written, location, wanted),
                          self._refusedAppend(record))

    async def appended(self, request: Any, upload_id: str) -> bytes:
        created: Created = await request.bodySink.result()
        version = self.version(request)
        record = created.record
        request.setResponseCode(204)
        setHeader(request, "Upload-Offset", record.offset)
        self.setComplete(request, version, record.state == COMPLETE)
        _reprDigestHeader(request, created.reprDigests)
        return b""

    # -- the write, shared by creation and append ----------------------------------------

    def _plan(self, request: Any, version: Version, record: UploadRecord, offset: int, complete: bool,
              contentDigest: Optional[Tuple[str, bytes]], length: Optional[int] = None) -> WritePlan:
        """
        How this body goes in: at C{offset}, no further than the upload's
        length (or the size limit), complete only if it arrives whole and
        says so, progress reported as 104s.
        """
        if length is None:
            length = record.length
        maxSize = self.uploads.maxSizeFor(request.principal)
        limit: Optional[int] = None
        if length is not None:
            limit = length - offset
        elif maxSize:
            limit = maxSize - offset
        bodyLength = request.bodyLength
        if limit is not None and bodyLength is not None and bodyLength > limit:
            raise self._lengthError(version, f"the body runs {bodyLength - limit} bytes past the upload's length")
        whole = {"complete": False}
        declared = record.extra.get("repr_digest")
        path = self.store.dataPath(record.id)

        def verify(outcome: BodyOutcome) -> Optional["Deferred[None]"]:
            # Complete only if the client said so and every byte came.
            whole["complete"] = complete and outcome.complete
            if not whole["complete"] or declared is None:
                return None
            # The Repr-Digest sent at creation is checked before the upload
            # is recorded complete (and announced finished to hooks).
            end = offset + outcome.written

            def compare(digests: Dict[str, bytes]) -> None:
                if digests[declared[0]] != base64.b64decode(declared[1]):
                    raise ReprDigestMismatch("the upload does not match the Repr-Digest sent at its creation",
                                             headers={"Upload-Complete": "?1"})

            return self.uploads.disk.run(_fileDigests, path, [declared[0]], end).addCallback(compare)

        def recorded(end: int) -> Any:
            completes = whole["complete"]
            final = end if completes and length is None else length
            if completes and final != end:
                raise self._lengthError(version, f"the upload ends at {end}, not at its length {final}")
            return self.uploads.advanceTo(end, final, completes=completes, since=offset)

        checksum = None
        if contentDigest is not None:
            name, expected = contentDigest
            checksum = Checksum(DIGESTS[name](), expected, "Content-Digest does not match the body")
        progress = self._progress(request, version) if version.progress else None
        return WritePlan(offset, limit, recorded, checksum=checksum, verify=verify,
                         overflow=TooLarge("the body runs past the upload's length"),
                         checkpoints=True, progress=progress)

    def _progress(self, request: Any, version: Version) -> Any:
        interval = self.config.ietf.progress_interval
        last = {"at": float("-inf")}
        clock = self.uploads.disk.reactor

        def report(offset: int) -> None:
            now = clock.seconds()
            if now - last["at"] >= interval:
                last["at"] = now
                self._interim(request, version, [("Upload-Offset", str(offset))])

        return report

    def _interim(self, request: Any, version: Version, headers: List[Tuple[str, str]]) -> None:
        if version.number is not None:
            headers = headers + [("Upload-Draft-Interop-Version", str(version.number))]
        sendInformational(request, 104, "Upload Resumption Supported", headers)

    def _afterCompletion(self, record: UploadRecord, location: str,
                         wanted: Sequence[str]) -> "Deferred[Created] | Created":
        """
        Once an upload completes: compute the digests the client asked for
        (from the file, in the disk pool).
        """
        if record.state != COMPLETE or not wanted:
            return Created(record, location, {})
        d = self.uploads.disk.run(_fileDigests, self.store.dataPath(record.id), sorted(wanted))
        return d.addCallback(lambda digests: Created(record, location, digests))

    def _refusedCreation(self, record: UploadRecord) -> Any:
        """
        The errback of a creation's body: a refused body (a digest that does
        not match, too long a body) fails the request, and the upload it
        created goes too (C{UploadService.discard}); a body cut off is not
        refused, and what arrived stays resumable.
        """

        def refused(failure: Failure) -> Any:
            failure = _asBadRequest(failure)
            if not failure.check(UploadError):
                return failure
            d = self.uploads.discard(record)
            d.addErrback(lambda f: self.log.failure("discarding a refused creation", f))
            return d.addCallback(lambda _: failure)

        return refused

    def _refusedAppend(self, record: UploadRecord) -> Any:
        """
        The errback of an append's body: an upload whose whole does not
        match its Repr-Digest has failed (the draft: do not process it), so
        it is terminated; any other refusal leaves it as it was.
        """

        def refused(failure: Failure) -> Any:
            failure = _asBadRequest(failure)
            if not failure.check(ReprDigestMismatch):
                return failure
            d = self.uploads.disk.run(self.store.terminate, record.id)
            d.addErrback(lambda f: self.log.failure("terminating a failed upload", f))
            return d.addCallback(lambda _: failure)

        return refused

    # -- the rest of the resource ---------------------------------------------------

    def head(self, request: Any, upload_id: str) -> bytes:
        """
        Offset retrieval, by HEAD or GET (whose content the draft leaves
        undefined: there is none).
        """
        version = self.version(request)
        record = self.uploads.find(upload_id, TUS_FAMILY, request.principal)
        request.setResponseCode(204)
        setHeader(request, "Cache-Control", "no-store")
        setHeader(request, "Upload-Offset", record.offset)
        self.setComplete(request, version, record.state == COMPLETE)
        if record.length is not None:
            setHeader(request, "Upload-Length", record.length)
        limits = self.limits(version, record, request.principal)
        if limits is not None:
            setHeader(request, "Upload-Limit", limits)
        return b""

    def options(self, request: Any, upload_id: Optional[str] = None) -> bytes:
        version = self.version(request)
        request.setResponseCode(204)
        limits = self.limits(NEWEST if version.number is None else version, None, request.principal)
        if limits is not None:
            setHeader(request, "Upload-Limit", limits)
        setHeader(request, "Accept-Patch", PARTIAL_UPLOAD)
        return b""

    def delete(self, request: Any, upload_id: str) -> "Deferred[bytes]":
        self.version(request)

        def terminated(_: bool) -> bytes:
            request.setResponseCode(204)
            return b""

        return self.uploads.terminate(upload_id, TUS_FAMILY, request.principal).addCallback(terminated)

    # -- checks and their errors -------------------------------------------------------------

    def _declaredLength(self, request: Any, version: Version, complete: bool, offset: int) -> Optional[int]:
        """
        The upload's length as this request declares it: C{Upload-Length},
        or -- when it completes the upload -- the offset plus its
        Content-Length; both must agree.
        """
        declared = _integer(header(request, "upload-length") or "")
        implied = offset + request.bodyLength if complete and request.bodyLength is not None else None
        if declared is not None and implied is not None and declared != implied:
            raise self._lengthError(version, f"Upload-Length is {declared} but the body ends the upload at {implied}")
        return declared if declared is not None else implied

    def _checkAppendSize(self, request: Any, version: Version, principal: Any) -> None:
        largest = self.config.ietf.max_append_size
        if largest and request.bodyLength is not None and request.bodyLength > largest:
            limits = self.limits(version, None, principal)
            raise TooLarge(f"a request body may be at most {largest} bytes (max-append-size)",
                           headers={"Upload-Limit": limits} if limits else None)

    def _offsetError(self, version: Version, record: UploadRecord, offset: int) -> UploadError:
        headers = {"Upload-Offset": str(record.offset), version.completeName: "?1" if version.incompleteHeader else "?0"}
        reason = f"Upload-Offset is {offset} but the upload is at {record.offset}"
        if not version.problems:
            return OffsetMismatch(reason, headers=headers)
        return Problem(reason, 409, PROBLEM_TYPES + "mismatching-upload-offset",
                       {"title": "offset from request does not match offset of resource",
                        "expected-offset": record.offset, "provided-offset": offset}, headers)

    def _lengthError(self, version: Version, reason: str) -> UploadError:
        headers = {version.completeName: "?1" if version.incompleteHeader else "?0"}
        if not version.lengthProblem:
            return BadRequest(reason, headers=headers)
        return Problem(reason, 400, PROBLEM_TYPES + "inconsistent-upload-length",
                       {"title": "inconsistent length values for upload"}, headers)

    def _completedError(self, version: Version, record: UploadRecord, bodyLength: Optional[int]) -> UploadError:
        reason = "the upload is already complete"
        headers = {"Upload-Offset": str(record.offset)}
        if version.completedProblem:
            return Problem(reason, 400, PROBLEM_TYPES + "completed-upload",
                           {"title": "upload is already completed"}, headers)
        if version.lengthProblem:
            return self._lengthError(version, reason + "; nothing more can be appended")
        return BadRequest(reason, headers=headers)


# -- the header grammar (RFC 8941 structured fields, through http-sf) ------------------------


class ReprDigestMismatch(BadRequest):
    """The whole upload does not match the Repr-Digest sent at creation."""


def _asBadRequest(failure: Failure) -> Failure:
    """
    A Content-Digest that does not match is the client's error (400):
    tus's 460 is tus's own status.
    """
    error = failure.value
    if isinstance(error, ChecksumMismatch):
        return Failure(BadRequest(error.reason))
    return failure


def _parse(value: str, kind: str) -> Any:
    """
    A structured field value (RFC 8941) of C{kind}: C{item} gives
    C{(value, parameters)}, C{dictionary} a dict of such pairs.

    @raise Exception: http-sf's error, for a value that does not parse.
    """
    return http_sf.parse(value.encode("latin-1"), tltype=kind)


def _integer(value: str) -> Optional[int]:
    """A non-negative sf-integer, or C{None} (the draft: ignore other values)."""
    try:
        parsed = _parse(value, "item")[0]
    except Exception:
        return None
    if isinstance(parsed, bool) or not isinstance(parsed, int) or parsed < 0:
        return None
    return parsed


def _boolean(value: Optional[str]) -> Optional[bool]:
    if value is None:
        return None
    try:
        parsed = _parse(value, "item")[0]
    except Exception:
        return None
    return parsed if isinstance(parsed, bool) else None


def _mediaType(request: Any) -> str:
    return (header(request, "content-type") or "").split(";")[0].strip().lower()


def _digestHeader(request: Any, name: str) -> Optional[Tuple[str, bytes]]:
    """
    The strongest algorithm chunkd knows in a C{Content-Digest} or
    C{Repr-Digest} dictionary (RFC 9530), or C{None} when there is none.

    @raise BadRequest: the header cannot be parsed.
    """
    value = header(request, name)
    if value is None:
        return None
    try:
        parsed = _parse(value, "dictionary")
    except Exception:
        raise BadRequest(f"{name} is not a structured dictionary of digests") from None
    for algorithm in ("sha-512", "sha-256"):
        member = parsed.get(algorithm)
        if member is not None:
            digest = member[0]
            if not isinstance(digest, bytes) or len(digest) != DIGESTS[algorithm]().digest_size:
                raise BadRequest(f"{name}: {algorithm} must be a byte sequence of the digest's size")
            return algorithm, digest
    return None


def _contentDigest(request: Any) -> Optional[Tuple[str, bytes]]:
    return _digestHeader(request, "content-digest")


def _wantedDigests(request: Any) -> List[str]:
    value = header(request, "want-repr-digest")
    if value is None:
        return []
    try:
        parsed = _parse(value, "dictionary")
    except Exception:
        return []
    wanted = [(member[0], name) for name, member in parsed.items()
              if name in DIGESTS and isinstance(member[0], int) and member[0] > 0]
    return [name for _, name in sorted(wanted, reverse=True)][:1]


def _reprDigestHeader(request: Any, digests: Dict[str, bytes]) -> None:
    if digests:
        setHeader(request, "Repr-Digest", str(http_sf.ser({n: (d, {}) for n, d in digests.items()})))


def _fileDigests(path: str, names: Sequence[str], length: Optional[int] = None) -> Dict[str, bytes]:
    """
    The digests of a file's first C{length} bytes (all of it by default).
    Blocking: for the disk pool.
    """
    hashes = {name: DIGESTS[name]() for name in names}
    left = length if length is not None else -1
    with open(path, "rb") as f:
        while left != 0:
            block = f.read(1 << 20 if left < 0 else min(1 << 20, left))
            if not block:
                break
            left -= len(block) if left > 0 else 0
            for h in hashes.values():
                h.update(block)
    return {name: h.digest() for name, h in hashes.items()}


