"""
Finalize tokens for the chunked-upload facade: issued by chunkd when an
upload is created, or minted by the application's backend with a secret it
shares with chunkd.  Only digests are stored, and every comparison is
constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from typing import Any, Callable, Dict, Optional, Tuple

from twisted.logger import Logger

from chunkd.errors import Forbidden, Unauthorized
from chunkd.store import UploadRecord


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
    # surrogatepass: a client's JSON may carry a lone surrogate; such a
    # token must simply fail to match, not fail to encode.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


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
