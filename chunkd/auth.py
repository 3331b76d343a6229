"""
Who is asking: bearer tokens, checked once per request when its headers
end, before any body byte is taken.

A token is either one of C{auth.tokens} (static, each standing for a
subject: a nightly backup job, a partner) or a JWT minted by the
application's backend and verified with PyJWT -- never JWT code of our own.
A JWT must carry C{sub} and C{exp}; an optional C{chunkd} claim narrows
what it allows::

    {"protocols": ["tus", "resumable"], "max_size": 1073741824, "upload": "<id>"}

What a request may do follows from its L{Principal}: the subject owns the
uploads it creates (another subject's upload is not found, exactly as an
unknown id, so existence never leaks), and the claims restrict protocol,
size and upload.  Without C{auth.required} a request without a token is
L{ANONYMOUS} and everything works as without auth; a token that is sent
is always checked.

The answers (RFC 6750): no token where one is required is 401 with
C{WWW-Authenticate: Bearer realm="chunkd"}; a malformed, expired or badly
signed token is 401 with C{error="invalid_token"}; a token whose claims
forbid the request is 403.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, Mapping, Optional

from chunkd.config import Config
from chunkd.errors import Forbidden, TooLarge, Unauthorized

if TYPE_CHECKING:
    from jwt.types import Options

REALM = 'Bearer realm="chunkd"'

#: algorithms per kind of key: a shared secret only verifies HMAC tokens,
#: a public key only its own kind of signature (so an HS256 token "signed"
#: with the public key's text, or an ES256 one against an RSA key, is
#: refused before any verification is tried).
HMAC_ALGORITHMS = ["HS256", "HS384", "HS512"]
RSA_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
EC_ALGORITHMS = ["ES256", "ES384", "ES512"]
EDDSA_ALGORITHMS = ["EdDSA"]


def publicKeyAlgorithms(key: Any) -> list:
    """The JWT algorithms a loaded public key verifies."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return EC_ALGORITHMS
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return EDDSA_ALGORITHMS
    return []


@dataclass(frozen=True)
class Principal:
    """
    The one asking, and what its token allows.

    @ivar subject: who owns the uploads it creates; C{None} for a request
        without a token (only where tokens are not required).
    @ivar protocols: the protocols it may use, or C{None} for any.
    @ivar maxSize: the largest upload it may create, or C{None}.
    @ivar upload: the one upload it may touch, or C{None} for its own.
    """

    subject: Optional[str]
    protocols: Optional[FrozenSet[str]] = None
    maxSize: Optional[int] = None
    upload: Optional[str] = None

    def checkProtocol(self, protocol: str) -> None:
        """
        @raise Forbidden: the token does not allow C{protocol}.
        """
        if self.protocols is not None and protocol not in self.protocols:
            raise Forbidden(f"this token does not allow the {protocol} protocol")

    def checkUpload(self, uploadId: Optional[str]) -> None:
        """
        @param uploadId: the upload asked for, or C{None} to create one.
        @raise Forbidden: the token is for one other upload.
        """
        if self.upload is not None and uploadId != self.upload:
            raise Forbidden("this token is for another upload")

    def checkSize(self, length: Optional[int], what: str) -> None:
        """
        @raise TooLarge: C{length} is over the token's C{max_size}.
        """
        if self.maxSize is not None and length is not None and length > self.maxSize:
            raise TooLarge(f"{what} exceeds this token's maximum of {self.maxSize} bytes")


#: a request without a token where none is required.
ANONYMOUS = Principal(None)


def invalidToken(reason: str) -> Unauthorized:
    return Unauthorized(
        f"invalid token: {reason}",
        headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
    )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class Authenticator:
    """
    Turns a request's C{Authorization} header into a L{Principal}, as
    C{auth:} in the config says.
    """

    def __init__(self, config: Config) -> None:
        auth = config.auth
        self.required = auth.required
        # Looked up by digest, compared in constant time: a dict lookup on
        # the token itself would answer faster for a near miss.
        self._static: Dict[bytes, str] = {_digest(t): s for t, s in auth.tokens.items()}
        self._jwt = auth.jwt
        self._keys: list = []
        if auth.jwt.secret:
            self._keys.append((auth.jwt.secret, HMAC_ALGORITHMS))
        if auth.jwt.public_key:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            # Read and checked when the config was loaded (config._checkAuth).
            with open(auth.jwt.public_key, "rb") as f:
                key = load_pem_public_key(f.read())
            self._keys.append((key, publicKeyAlgorithms(key)))

    @property
    def enabled(self) -> bool:
        """Whether any token can be accepted at all."""
        return bool(self.required or self._static or self._keys)

    def authenticate(self, authorization: Optional[str]) -> Principal:
        """
        @param authorization: the C{Authorization} header, or C{None}.
        @raise Unauthorized: no token where one is required, or a token that
            does not verify.
        """
        if authorization is None:
            if self.required:
                raise Unauthorized("this server needs a bearer token", headers={"WWW-Authenticate": REALM})
            return ANONYMOUS
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise invalidToken("expected Authorization: Bearer <token>")
        subject = self._staticSubject(token)
        if subject is not None:
            return Principal(subject)
        if token.count(".") == 2 and self._keys:
            return self._fromJWT(token)
        raise invalidToken("unknown token")

    def _staticSubject(self, token: str) -> Optional[str]:
        presented = _digest(token)
        for digest, subject in self._static.items():
            if hmac.compare_digest(digest, presented):
                return subject
        return None

    def _fromJWT(self, token: str) -> Principal:
        import jwt  # PyJWT; imported where used, as only JWT users need it

        options: "Options" = {"require": ["sub", "exp"]}
        claims: Optional[Mapping[str, Any]] = None
        failure = "bad signature"
        for key, algorithms in self._keys:
            try:
                claims = jwt.decode(
                    token, key, algorithms=algorithms, options=options,
                    audience=self._jwt.audience or None, issuer=self._jwt.issuer or None,
                    leeway=self._jwt.leeway,
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise invalidToken("the token has expired") from None
            except jwt.MissingRequiredClaimError as e:
                raise invalidToken(f"the token has no {e.claim!r} claim") from None
            except jwt.InvalidAudienceError:
                raise invalidToken("the token is for another audience") from None
            except jwt.InvalidIssuerError:
                raise invalidToken("the token is from another issuer") from None
            except (jwt.InvalidAlgorithmError, jwt.InvalidKeyError):
                failure = "a signing algorithm this server does not accept"
                continue
            except jwt.InvalidTokenError:
                raise invalidToken("the token cannot be read") from None
        if claims is None:
            raise invalidToken(failure)
        return _principalFrom(claims)


def _principalFrom(claims: Mapping[str, Any]) -> Principal:
    """
    The principal a verified JWT stands for; a C{chunkd} claim of the wrong
    shape makes the token invalid rather than unrestricted.
    """
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise invalidToken("sub must be a non-empty string")
    restrict = claims.get("chunkd", {})
    if not isinstance(restrict, dict):
        raise invalidToken("the chunkd claim must be an object")
    protocols = restrict.get("protocols")
    if protocols is not None and (
        not isinstance(protocols, list) or not all(isinstance(p, str) for p in protocols)
    ):
        raise invalidToken("chunkd.protocols must be a list of protocol names")
    maxSize = restrict.get("max_size")
    if maxSize is not None and (isinstance(maxSize, bool) or not isinstance(maxSize, int) or maxSize < 0):
        raise invalidToken("chunkd.max_size must be a whole number of bytes")
    upload = restrict.get("upload")
    if upload is not None and not isinstance(upload, str):
        raise invalidToken("chunkd.upload must be an upload id")
    return Principal(subject, None if protocols is None else frozenset(protocols), maxSize, upload)
