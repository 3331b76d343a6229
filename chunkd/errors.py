"""
Errors as values: each carries the HTTP status a client should see and a
one-line reason.  They are raised wherever a rule is broken (the store, a
protocol handler) and rendered in exactly one place, L{chunkd.web}.

The store raises them too, although it knows nothing of HTTP: the status is
just the conventional number for "not found", "conflict" and so on, and
keeping one hierarchy means no layer has to translate another's errors.
"""

from __future__ import annotations

import errno
from typing import Mapping, Optional


class UploadError(Exception):
    """
    A request cannot be served as asked.

    @ivar status: the HTTP status code to answer with.
    @ivar reason: one line for the client, never a traceback.
    @ivar headers: extra response headers (such as the current
        C{Upload-Offset} on a 409).
    """

    status = 400

    def __init__(
        self,
        reason: str,
        headers: Optional[Mapping[str, str]] = None,
        status: Optional[int] = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = dict(headers or {})
        if status is not None:
            self.status = status


class BadRequest(UploadError):
    status = 400


class Unauthorized(UploadError):
    status = 401


class Forbidden(UploadError):
    status = 403


class UploadNotFound(UploadError):
    status = 404


class MethodNotAllowed(UploadError):
    status = 405


class Conflict(UploadError):
    """
    The upload is not in a state that allows this request (not finished
    yet, say).
    """

    status = 409


class OffsetMismatch(Conflict):
    status = 409


class UploadGone(UploadError):
    status = 410


class RequestTimeout(UploadError):
    """
    The request's head, or its body, came too slowly (L{chunkd.guard}).
    """

    status = 408


class PreconditionFailed(UploadError):
    status = 412


class TooLarge(UploadError):
    status = 413


class URITooLong(UploadError):
    status = 414


class UnsupportedMediaType(UploadError):
    status = 415


class UploadLocked(UploadError):
    """
    Another request is writing to this upload.  tus clients retry a 423.
    """

    status = 423


class HeadersTooLarge(UploadError):
    status = 431


class ChecksumMismatch(UploadError):
    """
    The body's digest is not the one the client announced (tus checksum
    extension's own status code).
    """

    status = 460


class InternalError(UploadError):
    """
    Something failed on our side; the reason names the step, never a path
    or a traceback.
    """

    status = 500


class TooManyRequests(UploadError):
    status = 429


class ServiceUnavailable(UploadError):
    status = 503


class InsufficientStorage(UploadError):
    status = 507


class Problem(UploadError):
    """
    An error with an RFC 9457 problem type, rendered as an
    C{application/problem+json} document (its C{type}, its extension
    members, and the reason as C{detail}) instead of a line of text.

    @ivar type: the problem type URI.
    @ivar members: the document's other members (C{title}, extensions).
    """

    def __init__(self, reason: str, status: int, type: str, members: Optional[Mapping[str, object]] = None,
                 headers: Optional[Mapping[str, str]] = None) -> None:
        super().__init__(reason, headers=headers, status=status)
        self.type = type
        self.members = dict(members or {})


# -- the catalogue: errors more than one place raises, and the one disk map --

#: errnos that mean "no room": the client may retry once space is freed.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: errnos a shared file system answers once this host lost its connection,
#: and with it the upload's lock (GlusterFS with client.strict-locks): the
#: bytes are not written, and nothing is recorded; another host may take
#: the upload over, so the client is told to try again (503).
LOST_LOCK = frozenset({errno.ENOTCONN, errno.EBADFD})


def noSuchUpload() -> UploadNotFound:
    """
    An unknown id, a malformed one, or another protocol's (or, later,
    another user's) upload: one answer, so existence never leaks.
    """
    return UploadNotFound("no such upload")


def dataGone() -> UploadGone:
    """The upload's record remains, its data does not."""
    return UploadGone("the upload's data is gone")


def internalError() -> InternalError:
    return InternalError("internal error")


def diskError(error: BaseException, doing: str = "storing the upload") -> UploadError:
    """
    The one place a failed disk operation becomes an answer: 507 for a
    full disk or quota (the client may retry later), a 500 naming the
    misconfiguration when the completed area is on another file system,
    else a 500 naming the step -- never the path or the errno text.
    """
    if isinstance(error, UploadError):
        return error
    if isinstance(error, OSError) and error.errno in LOST_LOCK:
        return ServiceUnavailable("the storage is unreachable; try again")
    if isinstance(error, OSError) and error.errno == errno.EDQUOT:
        return InsufficientStorage("the storage quota is exhausted")
    if isinstance(error, OSError) and error.errno in NO_SPACE:
        return InsufficientStorage("the disk is full")
    if isinstance(error, OSError) and error.errno == errno.EXDEV:
        return InternalError("complete.directory must be on the storage file system")
    return InternalError(f"{doing} failed")
