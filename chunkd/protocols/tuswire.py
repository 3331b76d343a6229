"""
The tus wire grammar: header values read and written the tus way.  tus
itself and the chunked-upload facade (which camera apps drive with tus
clients) both speak it, so it lives here rather than in either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from email.utils import formatdate
from typing import Any, Dict, Optional

from chunkd.errors import BadRequest, PreconditionFailed
from chunkd.store import ACTIVE, UploadRecord
from chunkd.uploads import Checksum
from chunkd.web import header, setHeader

TUS_VERSION = "1.0.0"
#: tus and its IETF successor keep one kind of upload (a sequential offset,
#: a length that may be deferred, tus metadata): each finds the other's.
TUS_FAMILY = frozenset({"tus", "ietf"})
OFFSET_STREAM = "application/offset+octet-stream"
CHECKSUMS = {"sha1": hashlib.sha1, "md5": hashlib.md5, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
_DIGITS = re.compile(r"^[0-9]{1,19}\Z")
_METADATA_KEY = re.compile(r"^[^\s,]+\Z")


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


def requiredOffset(request: Any) -> int:
    """
    C{Upload-Offset}, which every write must carry.

    @raise BadRequest: it is missing or not a number.
    """
    offset = parseCount("Upload-Offset", header(request, "upload-offset"))
    if offset is None:
        raise BadRequest("Upload-Offset is required")
    return offset


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


def readMetadata(request: Any, maxSize: int) -> "tuple[str, Dict[str, Optional[str]]]":
    """
    The raw C{Upload-Metadata} header (echoed on HEAD) and its decoded
    pairs.

    @raise BadRequest: too large, or malformed.
    """
    raw = header(request, "upload-metadata") or ""
    if len(raw) > maxSize:
        raise BadRequest("Upload-Metadata is too large")
    return raw, parseMetadata(raw)


def parseChecksum(value: Optional[str], mismatch: str = "Upload-Checksum does not match the body") -> Optional[Checksum]:
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
    return Checksum(CHECKSUMS[algorithm](), digest, mismatch)


def mediaType(request: Any) -> str:
    """The request's Content-Type without parameters, lower-cased."""
    return (header(request, "content-type") or "").split(";")[0].strip().lower()


def checkVersion(request: Any, required: bool = True) -> None:
    """
    Answer with C{Tus-Resumable}, and refuse a request for another version
    (or, when C{required}, one that names none).

    @raise PreconditionFailed: with C{Tus-Version}, as tus asks.
    """
    setHeader(request, "Tus-Resumable", TUS_VERSION)
    version = header(request, "tus-resumable")
    if version != TUS_VERSION and (required or version is not None):
        raise PreconditionFailed(
            f"Tus-Resumable must be {TUS_VERSION}", headers={"Tus-Version": TUS_VERSION}
        )


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


def answerHead(request: Any, record: UploadRecord, offset: bool = True) -> bytes:
    """
    A HEAD's answer: where the upload stands (C{offset=False} hides the
    offset, for a final concatenation still being assembled), its length,
    metadata and expiry, never cached.
    """
    setHeader(request, "Cache-Control", "no-store")
    request.setResponseCode(200)
    if offset:
        setHeader(request, "Upload-Offset", record.offset)
    if record.length is None:
        setHeader(request, "Upload-Defer-Length", 1)
    else:
        setHeader(request, "Upload-Length", record.length)
    if record.extra.get("tus_metadata"):
        setHeader(request, "Upload-Metadata", record.extra["tus_metadata"])
    expiresHeader(request, record)
    return b""
