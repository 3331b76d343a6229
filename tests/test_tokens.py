"""
chunkd.tokens: issued and minted finalize tokens, on a clock the tests
turn by hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from typing import Any, Dict, Optional

from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from chunkd.errors import Forbidden, Unauthorized
from chunkd.store import UploadRecord
from chunkd.tokens import UploadTokens, mintToken

SECRET = "s" * 40
UPLOAD_ID = "0123456789abcdef0123456789abcdef"
OTHER_ID = "fedcba9876543210fedcba9876543210"
START = 1_700_000_000.0


class Clock:
    """A clock that only moves when told."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(extra: Optional[Dict[str, Any]] = None, uploadId: str = UPLOAD_ID) -> UploadRecord:
    return UploadRecord(id=uploadId, protocol="facade", length=10, extra=dict(extra or {}))


class TokensTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def tokens(self, secret: str = "", ttl: float = 0, issue: bool = True) -> UploadTokens:
        return UploadTokens(secret, ttl, issue, self.clock)

    def assertForbidden(self, tokens: UploadTokens, rec: UploadRecord, token: str) -> Forbidden:
        with self.assertRaises(Forbidden, msg=repr(token)) as caught:
            tokens.check(rec, token)
        self.assertEqual(caught.exception.status, 403)
        return caught.exception


class MintTokenTests(unittest.TestCase):
    def test_format(self) -> None:
        token = mintToken(b"k" * 32, UPLOAD_ID, 1234)
        self.assertNotIn("=", token)
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        self.assertEqual(len(raw), 40)
        self.assertEqual(raw[:8], struct.pack(">Q", 1234))
        self.assertEqual(raw[8:], hmac.new(b"k" * 32, UPLOAD_ID.encode() + raw[:8], hashlib.sha256).digest())

    def test_deterministicAndDistinct(self) -> None:
        self.assertEqual(mintToken(b"k", UPLOAD_ID, 1), mintToken(b"k", UPLOAD_ID, 1))
        tokens = {mintToken(b"k", UPLOAD_ID, 1), mintToken(b"k", UPLOAD_ID, 2),
                  mintToken(b"k", OTHER_ID, 1), mintToken(b"j", UPLOAD_ID, 1)}
        self.assertEqual(len(tokens), 4)


class ConfigurationWarningTests(TokensTestCase):
    def warnings(self, secret: str, issue: bool) -> list:
        with capturedLogs() as events:
            self.tokens(secret, issue=issue)
        return [e for e in events if e["log_level"] == LogLevel.warn]

    def test_shortSecretIsWarnedAbout(self) -> None:
        warned = self.warnings("short", issue=True)
        self.assertEqual(len(warned), 1)
        self.assertIn("shorter than 32 bytes", warned[0]["log_format"])

    def test_noWayToFinalizeIsWarnedAbout(self) -> None:
        warned = self.warnings("", issue=False)
        self.assertEqual(len(warned), 1)
        self.assertIn("no upload can be finalized", warned[0]["log_format"])

    def test_soundConfigurationsAreQuiet(self) -> None:
        self.assertEqual(self.warnings(SECRET, issue=False), [])
        self.assertEqual(self.warnings("", issue=True), [])
        self.assertEqual(self.warnings("x" * 32, issue=True), [])


class IssueTests(TokensTestCase):
    def test_issueOff(self) -> None:
        self.assertEqual(self.tokens(SECRET, ttl=60, issue=False).issueFor(), (None, {}))

    def test_issuedTokenKeepsOnlyItsDigest(self) -> None:
        token, extra = self.tokens().issueFor()
        assert token is not None
        self.assertEqual(extra, {"token_sha256": hashlib.sha256(token.encode()).hexdigest()})
        self.assertNotIn(token, repr(extra))
        # 256 random bits, URL-safe
        self.assertGreaterEqual(len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))), 32)
        self.assertRegex(token, r"^[A-Za-z0-9_-]+$")

    def test_everyTokenIsNew(self) -> None:
        tokens = self.tokens()
        issued = {tokens.issueFor()[0] for _ in range(20)}
        self.assertEqual(len(issued), 20)

    def test_ttlSetsAnExpiry(self) -> None:
        token, extra = self.tokens(ttl=300).issueFor()
        assert token is not None
        self.assertEqual(extra["token_expires"], START + 300)
        self.assertEqual(extra["token_sha256"], hashlib.sha256(token.encode()).hexdigest())

    def test_noTtlNoExpiry(self) -> None:
        _, extra = self.tokens(ttl=0).issueFor()
        self.assertNotIn("token_expires", extra)


class CheckIssuedTests(TokensTestCase):
    def test_missingTokenIsUnauthorized(self) -> None:
        tokens = self.tokens(SECRET)
        _, extra = tokens.issueFor()
        for token in (None, ""):
            with self.assertRaises(Unauthorized) as caught:
                tokens.check(record(extra), token)
            self.assertEqual(caught.exception.status, 401)
            self.assertEqual(caught.exception.headers, {"WWW-Authenticate": 'Upload-Token realm="chunkd"'})

    def test_issuedTokenIsAccepted(self) -> None:
        tokens = self.tokens()
        token, extra = tokens.issueFor()
        assert token is not None
        rec = record(extra)
        tokens.check(rec, token)
        tokens.check(rec, token)  # checking twice changes nothing
        self.assertEqual(rec.extra, extra)

    def test_wrongTokenIsForbidden(self) -> None:
        tokens = self.tokens()
        token, extra = tokens.issueFor()
        assert token is not None
        other, _ = tokens.issueFor()
        assert other is not None
        for wrong in (other, token[:-1], token + "x", token.upper(), extra["token_sha256"]):
            self.assertForbidden(tokens, record(extra), wrong)

    def test_anotherUploadsTokenIsForbidden(self) -> None:
        tokens = self.tokens()
        token, _ = tokens.issueFor()
        _, otherExtra = tokens.issueFor()
        assert token is not None
        self.assertForbidden(tokens, record(otherExtra, OTHER_ID), token)

    def test_recordWithoutDigestRefusesEverything(self) -> None:
        tokens = self.tokens()
        token, _ = tokens.issueFor()
        assert token is not None
        self.assertForbidden(tokens, record({}), token)

    def test_issuedTokenExpires(self) -> None:
        tokens = self.tokens(ttl=60)
        token, extra = tokens.issueFor()
        assert token is not None
        rec = record(extra)
        self.clock.now = START + 59.5
        tokens.check(rec, token)
        self.clock.now = START + 60
        reason = self.assertForbidden(tokens, rec, token).reason
        self.assertIn("expired", reason)
        self.clock.now = START + 3600
        self.assertForbidden(tokens, rec, token)

    def test_issuedWithoutTtlNeverExpires(self) -> None:
        tokens = self.tokens(ttl=0)
        token, extra = tokens.issueFor()
        assert token is not None
        self.clock.now = START + 10 * 365 * 86400
        tokens.check(record(extra), token)

    def test_issuedTokenStillWorksWhenIssuingIsTurnedOff(self) -> None:
        # The record keeps the digest: a restart with issue_tokens off does
        # not strand uploads created before.
        token, extra = self.tokens().issueFor()
        assert token is not None
        self.tokens(issue=False).check(record(extra), token)

    def test_aTokenThatIsNotUnicodeTextIsRefused(self) -> None:
        # A JSON body can carry a lone surrogate: refused, never a crash.
        tokens = self.tokens(SECRET)
        _, extra = tokens.issueFor()
        for token in ("\ud800", "abc\udfff"):
            with self.assertRaises(Forbidden):
                tokens.check(record(extra), token)


class CheckMintedTests(TokensTestCase):
    def mint(self, expires: float, uploadId: str = UPLOAD_ID, secret: str = SECRET) -> str:
        return mintToken(secret.encode(), uploadId, int(expires))

    def test_validUntilItsExpiry(self) -> None:
        tokens = self.tokens(SECRET, issue=False)
        token = self.mint(START + 100)
        rec = record()
        tokens.check(rec, token)
        self.clock.now = START + 99.9
        tokens.check(rec, token)
        self.clock.now = START + 100
        self.assertIn("expired", self.assertForbidden(tokens, rec, token).reason)

    def test_alreadyExpired(self) -> None:
        tokens = self.tokens(SECRET)
        self.assertForbidden(tokens, record(), self.mint(START - 1))
        self.assertForbidden(tokens, record(), self.mint(0))

    def test_acceptedAlongsideAnIssuedToken(self) -> None:
        tokens = self.tokens(SECRET)
        issued, extra = tokens.issueFor()
        assert issued is not None
        rec = record(extra)
        tokens.check(rec, self.mint(START + 10))
        tokens.check(rec, issued)

    def test_forAnotherUpload(self) -> None:
        tokens = self.tokens(SECRET)
        reason = self.assertForbidden(tokens, record(), self.mint(START + 100, OTHER_ID)).reason
        self.assertNotIn("expired", reason)

    def test_withAnotherSecret(self) -> None:
        tokens = self.tokens(SECRET)
        self.assertForbidden(tokens, record(), self.mint(START + 100, secret="t" * 40))
        self.assertForbidden(tokens, record(), self.mint(START + 100, secret=SECRET[:-1]))

    def test_noSecretRefusesMintedTokens(self) -> None:
        tokens = self.tokens("", issue=True)
        self.assertForbidden(tokens, record(), mintToken(b"", UPLOAD_ID, int(START + 100)))

    def test_tamperedExpiryIsRefused(self) -> None:
        tokens = self.tokens(SECRET)
        token = self.mint(START - 10)
        raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        raw[:8] = struct.pack(">Q", int(START + 10_000))
        forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
        self.assertNotIn("expired", self.assertForbidden(tokens, record(), forged).reason)

    def test_paddedTokenIsAccepted(self) -> None:
        # base64url with its padding back decodes to the same bytes.
        tokens = self.tokens(SECRET)
        token = self.mint(START + 100)
        tokens.check(record(), token + "=" * (-len(token) % 4))

    def test_malformedTokensAreForbidden(self) -> None:
        tokens = self.tokens(SECRET)
        good = self.mint(START + 100)
        for token in [
            "x",
            "=",
            "====",
            "a" * 53,                 # one character short: 3 = padding
            good[:-1],
            good + "A",
            good + "AAAA",            # one byte too many
            good[:-4],                # too few bytes
            "!" * 54,                 # nothing of the alphabet
            "B" + good[1:] if good[0] != "B" else "C" + good[1:],  # another expiry, same MAC
            "é" * 54,                 # not ASCII
            "\x00" * 54,
            good + " ",
            "A" * 129,
            good * 3,                 # oversized, with a valid prefix
            "A" * 10_000,
        ]:
            self.assertForbidden(tokens, record(), token)

    def test_malformedTokensAgainstAnIssuedDigest(self) -> None:
        tokens = self.tokens(SECRET)
        _, extra = tokens.issueFor()
        for token in ["x", "é" * 54, "\x00", "A" * 10_000]:
            self.assertForbidden(tokens, record(extra), token)

    def test_oversizedValidTokenIsRefused(self) -> None:
        # Within 128 characters, base64 that decodes to the right bytes is
        # accepted however long it is written; past that nothing is decoded.
        tokens = self.tokens(SECRET)
        token = self.mint(START + 100)
        self.assertLessEqual(len(token), 128)
        self.assertForbidden(tokens, record(), token + "=" * 200)
