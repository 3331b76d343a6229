"""
Errors as values: each carries the HTTP status a client should see and a
one-line reason.  They are raised wherever a rule is broken (the store, a
protocol handler) and rendered in exactly one place, L{chunkd.web}.

The store raises them too, although it knows nothing of HTTP: the status is
just the conventional number for "not found", "conflict" and so on, and
keeping one hierarchy means no layer has to translate another's errors.
"""

from __future__ import annotations

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


class OffsetMismatch(UploadError):
    status = 409


class UploadGone(UploadError):
    status = 410


class PreconditionFailed(UploadError):
    status = 412


class TooLarge(UploadError):
    status = 413


class UnsupportedMediaType(UploadError):
    status = 415


class UploadLocked(UploadError):
    """
    Another request is writing to this upload.  tus clients retry a 423.
    """

    status = 423


class ChecksumMismatch(UploadError):
    """
    The body's digest is not the one the client announced (tus checksum
    extension's own status code).
    """

    status = 460


class ServiceUnavailable(UploadError):
    status = 503


class InsufficientStorage(UploadError):
    status = 507
