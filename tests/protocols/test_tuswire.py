"""
chunkd.protocols.tuswire: the tus header grammar, read and written --
header values in, header values out, no socket.
"""

from __future__ import annotations

import base64
import hashlib
from email.utils import parsedate_to_datetime
from typing import Dict, Optional

from twisted.trial import unittest
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from chunkd.errors import BadRequest, ChecksumMismatch, PreconditionFailed
from chunkd.protocols import tuswire
from chunkd.protocols.tuswire import (
    CHECKSUMS,
    TUS_VERSION,
    answerHead,
    answerWrite,
    checkVersion,
    expiresHeader,
    parseChecksum,
    parseCount,
    parseMetadata,
    readMetadata,
    requiredOffset,
)
from chunkd.sinks import BodyOutcome
from chunkd.store import ACTIVE, COMPLETE, EXPIRED, UploadRecord

#: 2024-01-02 03:04:05 UTC
EPOCH = 1704164645.0


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def request(headers: Optional[Dict[str, str]] = None) -> DummyRequest:
    r = DummyRequest([b"files"])
    for name, value in (headers or {}).items():
        r.requestHeaders.setRawHeaders(name.encode("latin-1"), [value.encode("latin-1")])
    return r


def sent(r: DummyRequest, name: str) -> Optional[str]:
    """The response header C{name} as set, or C{None}."""
    values = r.responseHeaders.getRawHeaders(name.encode("latin-1"))
    if values is None:
        return None
    assert len(values) == 1, values
    return values[0].decode("latin-1")


def record(**kw: object) -> UploadRecord:
    fields: Dict[str, object] = {"id": "0" * 32, "protocol": "tus", "length": 100}
    fields.update(kw)
    return UploadRecord(**fields)  # type: ignore[arg-type]


def outcome(complete: bool = True) -> BodyOutcome:
    return BodyOutcome(complete=complete, written=3, overflow=False, trailers=Headers())


class ParseCountTests(unittest.TestCase):
    def test_absentIsNone(self) -> None:
        self.assertIsNone(parseCount("Upload-Length", None))

    def test_plainNumbers(self) -> None:
        for text, value in [("0", 0), ("7", 7), ("007", 7), ("1048576", 1048576),
                            ("9" * 19, 10 ** 19 - 1)]:
            self.assertEqual(parseCount("Upload-Length", text), value, text)

    def test_notPlainNumbersNameTheHeader(self) -> None:
        for text in ["", "+5", "-5", "-0", " 5", "5 ", "5 6", "1" * 20, "5.0", "1e3", "0x10",
                     "five", "\u0665", "\uff15", "5,6", "5\n"]:
            with self.assertRaises(BadRequest, msg=repr(text)) as caught:
                parseCount("Upload-Length", text)
            self.assertIn("Upload-Length", caught.exception.reason)
            self.assertEqual(caught.exception.status, 400)

    def test_theGivenNameIsTheOneReported(self) -> None:
        with self.assertRaises(BadRequest) as caught:
            parseCount("Upload-Offset", "x")
        self.assertIn("Upload-Offset", caught.exception.reason)
        self.assertNotIn("Upload-Length", caught.exception.reason)


class RequiredOffsetTests(unittest.TestCase):
    def test_offsetIsRead(self) -> None:
        self.assertEqual(requiredOffset(request({"Upload-Offset": "0"})), 0)
        self.assertEqual(requiredOffset(request({"Upload-Offset": "123456"})), 123456)

    def test_surroundingSpaceIsNotPartOfTheValue(self) -> None:
        # As HTTP reads a field value: optional white space around it.
        self.assertEqual(requiredOffset(request({"Upload-Offset": " 42 "})), 42)

    def test_missingIsRefused(self) -> None:
        with self.assertRaises(BadRequest) as caught:
            requiredOffset(request())
        self.assertIn("Upload-Offset", caught.exception.reason)

    def test_malformedIsRefused(self) -> None:
        for text in ["-1", "abc", "1" * 20, ""]:
            with self.assertRaises(BadRequest, msg=repr(text)) as caught:
                requiredOffset(request({"Upload-Offset": text}))
            self.assertIn("Upload-Offset", caught.exception.reason)


class ParseMetadataTests(unittest.TestCase):
    def test_emptyOrAbsent(self) -> None:
        for value in [None, "", "   "]:
            self.assertEqual(parseMetadata(value), {}, repr(value))

    def test_pairsAreDecoded(self) -> None:
        value = f"filename {b64('world_domination_plan.pdf')},is_confidential,type {b64('text/plain')}"
        self.assertEqual(parseMetadata(value), {
            "filename": "world_domination_plan.pdf",
            "is_confidential": None,
            "type": "text/plain",
        })

    def test_spaceAroundPairsIsIgnored(self) -> None:
        self.assertEqual(parseMetadata(f" a {b64('1')} , b "), {"a": "1", "b": None})

    def test_keyWithoutValue(self) -> None:
        self.assertEqual(parseMetadata("flag"), {"flag": None})

    def test_keyWithTrailingSpace(self) -> None:
        # "key " with nothing after the space: the pair is stripped first.
        self.assertEqual(parseMetadata("flag "), {"flag": None})

    def test_valuesAreUTF8Text(self) -> None:
        self.assertEqual(parseMetadata(f"name {b64('Ünïcødé ✓.txt')}"), {"name": "Ünïcødé ✓.txt"})

    def test_invalidUTF8IsReplaced(self) -> None:
        raw = base64.b64encode(b"ok\xff\xfe!").decode("ascii")
        self.assertEqual(parseMetadata(f"k {raw}"), {"k": "ok\ufffd\ufffd!"})

    def test_keysAreCaseSensitive(self) -> None:
        self.assertEqual(parseMetadata(f"a {b64('1')},A {b64('2')}"), {"a": "1", "A": "2"})

    def test_repeatedKeyIsRefused(self) -> None:
        for value in [f"a {b64('1')},a {b64('2')}", "a,a", f"a,a {b64('x')}"]:
            with self.assertRaises(BadRequest, msg=value) as caught:
                parseMetadata(value)
            self.assertIn("'a'", caught.exception.reason)

    def test_badBase64IsRefused(self) -> None:
        for bad in ["not base64!", "YQ", "Y", "YQ=", "YQ==YQ==x", "YQ=\u00e9"]:
            with self.assertRaises(BadRequest, msg=repr(bad)) as caught:
                parseMetadata(f"key {bad}")
            self.assertIn("base64", caught.exception.reason)

    def test_malformedPairsAreRefused(self) -> None:
        for value in [
            f"a  {b64('x')}",            # two spaces: an empty part
            f"a {b64('x')} {b64('y')}",  # three parts
            ",a",                        # an empty pair
            "a,",                        # a trailing empty pair
            "a,,b",
            f"a\tb {b64('x')}",          # white space inside a key
            f"a\u00a0b {b64('x')}",      # and not only ASCII white space
        ]:
            with self.assertRaises(BadRequest, msg=repr(value)) as caught:
                parseMetadata(value)
            self.assertIn("malformed", caught.exception.reason)

    def test_commaSplitsPairs(self) -> None:
        # A comma never belongs to a key: it ends the pair.
        self.assertEqual(parseMetadata("a,b"), {"a": None, "b": None})


class ReadMetadataTests(unittest.TestCase):
    def test_rawAndDecoded(self) -> None:
        raw = f"filename {b64('a.txt')},flag"
        self.assertEqual(readMetadata(request({"Upload-Metadata": raw}), 1000),
                         (raw, {"filename": "a.txt", "flag": None}))

    def test_absent(self) -> None:
        self.assertEqual(readMetadata(request(), 10), ("", {}))

    def test_sizeLimit(self) -> None:
        raw = f"k {b64('x' * 30)}"
        self.assertEqual(readMetadata(request({"Upload-Metadata": raw}), len(raw))[0], raw)
        with self.assertRaises(BadRequest) as caught:
            readMetadata(request({"Upload-Metadata": raw}), len(raw) - 1)
        self.assertIn("too large", caught.exception.reason)

    def test_malformedIsRefused(self) -> None:
        with self.assertRaises(BadRequest):
            readMetadata(request({"Upload-Metadata": "k !!!"}), 1000)


class ParseChecksumTests(unittest.TestCase):
    def test_absentIsNone(self) -> None:
        self.assertIsNone(parseChecksum(None))

    def test_everyAlgorithm(self) -> None:
        self.assertEqual(sorted(CHECKSUMS), ["md5", "sha1", "sha256", "sha512"])
        body = b"hello tus"
        for name in CHECKSUMS:
            expected = hashlib.new(name, body).digest()
            for spelled in (name, name.upper(), name.capitalize()):
                checksum = parseChecksum(f"{spelled} {base64.b64encode(expected).decode()}")
                assert checksum is not None
                self.assertEqual(checksum.expected, expected)
                self.assertEqual(checksum.digest.name, hashlib.new(name).name)
                # fresh: nothing fed yet
                self.assertEqual(checksum.digest.digest(), hashlib.new(name).digest())
                checksum.digest.update(body)
                checksum.verify(outcome())  # no exception: it matches

    def test_eachChecksumHasItsOwnHash(self) -> None:
        value = "sha1 " + base64.b64encode(hashlib.sha1(b"x").digest()).decode()
        first, second = parseChecksum(value), parseChecksum(value)
        assert first is not None and second is not None
        self.assertIsNot(first.digest, second.digest)
        first.digest.update(b"x")
        self.assertEqual(second.digest.digest(), hashlib.sha1().digest())

    def test_unknownAlgorithm(self) -> None:
        for name in ["crc32", "sha3", "sha-256", "md4", ""]:
            with self.assertRaises(BadRequest, msg=name) as caught:
                parseChecksum(f"{name} AAAA")
            if name:
                self.assertIn(name, caught.exception.reason)

    def test_badBase64(self) -> None:
        for digest in ["!!!!", "AAA", "AA AA", "A===", "\u00e9\u00e9\u00e9\u00e9"]:
            with self.assertRaises(BadRequest, msg=repr(digest)):
                parseChecksum(f"sha1 {digest}")

    def test_wrongShape(self) -> None:
        for value in ["sha1", "", "sha1  AAAA", " sha1 AAAA", "sha1 AAAA extra", "sha1:AAAA"]:
            with self.assertRaises(BadRequest, msg=repr(value)):
                parseChecksum(value)

    def test_mismatchReasonIsTheCallers(self) -> None:
        checksum = parseChecksum("md5 " + base64.b64encode(hashlib.md5(b"abc").digest()).decode(),
                                 mismatch="the chunk is corrupt")
        assert checksum is not None
        checksum.digest.update(b"abd")
        with self.assertRaises(ChecksumMismatch) as caught:
            checksum.verify(outcome())
        self.assertEqual(caught.exception.reason, "the chunk is corrupt")
        self.assertEqual(caught.exception.status, 460)

    def test_defaultMismatchReason(self) -> None:
        checksum = parseChecksum("sha256 " + base64.b64encode(hashlib.sha256(b"abc").digest()).decode())
        assert checksum is not None
        checksum.digest.update(b"xyz")
        with self.assertRaises(ChecksumMismatch) as caught:
            checksum.verify(outcome())
        self.assertEqual(caught.exception.reason, "Upload-Checksum does not match the body")

    def test_cutOffBodyNeverMatches(self) -> None:
        checksum = parseChecksum("sha1 " + base64.b64encode(hashlib.sha1(b"abc").digest()).decode())
        assert checksum is not None
        checksum.digest.update(b"abc")  # even with the right bytes
        with self.assertRaises(ChecksumMismatch) as caught:
            checksum.verify(outcome(complete=False))
        self.assertIn("cut off", caught.exception.reason)

    def test_wrongLengthDigestNeverMatches(self) -> None:
        # A digest of another size is well-formed base64: refused by verify.
        checksum = parseChecksum("sha1 " + base64.b64encode(b"short").decode())
        assert checksum is not None
        self.assertEqual(checksum.expected, b"short")
        checksum.digest.update(b"anything")
        with self.assertRaises(ChecksumMismatch):
            checksum.verify(outcome())


class CheckVersionTests(unittest.TestCase):
    def test_rightVersion(self) -> None:
        for required in (True, False):
            r = request({"Tus-Resumable": TUS_VERSION})
            checkVersion(r, required=required)
            self.assertEqual(sent(r, "Tus-Resumable"), TUS_VERSION)
            self.assertIsNone(sent(r, "Tus-Version"))

    def test_missingWhenRequired(self) -> None:
        r = request()
        with self.assertRaises(PreconditionFailed) as caught:
            checkVersion(r)
        self.assertEqual(caught.exception.status, 412)
        self.assertEqual(caught.exception.headers, {"Tus-Version": TUS_VERSION})
        self.assertEqual(sent(r, "Tus-Resumable"), TUS_VERSION)

    def test_missingWhenNotRequired(self) -> None:
        r = request()
        checkVersion(r, required=False)
        self.assertEqual(sent(r, "Tus-Resumable"), TUS_VERSION)

    def test_otherVersionIsAlwaysRefused(self) -> None:
        for required in (True, False):
            for version in ("0.2.2", "1.0", "2.0.0", ""):
                r = request({"Tus-Resumable": version})
                with self.assertRaises(PreconditionFailed, msg=(required, version)) as caught:
                    checkVersion(r, required=required)
                self.assertEqual(caught.exception.headers["Tus-Version"], TUS_VERSION)
                self.assertEqual(sent(r, "Tus-Resumable"), TUS_VERSION)


class ExpiresHeaderTests(unittest.TestCase):
    def test_activeWithExpiry(self) -> None:
        r = request()
        expiresHeader(r, record(expires=EPOCH))
        self.assertEqual(sent(r, "Upload-Expires"), "Tue, 02 Jan 2024 03:04:05 GMT")
        value = sent(r, "Upload-Expires")
        assert value is not None
        self.assertEqual(parsedate_to_datetime(value).timestamp(), EPOCH)

    def test_noExpiry(self) -> None:
        r = request()
        expiresHeader(r, record(expires=None))
        self.assertIsNone(sent(r, "Upload-Expires"))

    def test_notActive(self) -> None:
        for state in (COMPLETE, EXPIRED):
            r = request()
            expiresHeader(r, record(expires=EPOCH, state=state))
            self.assertIsNone(sent(r, "Upload-Expires"), state)

    def test_httpDate(self) -> None:
        self.assertEqual(tuswire.httpDate(0), "Thu, 01 Jan 1970 00:00:00 GMT")


class AnswerWriteTests(unittest.TestCase):
    def test_offsetAndExpiry(self) -> None:
        r = request()
        body = answerWrite(r, record(offset=42, expires=EPOCH, state=ACTIVE))
        self.assertEqual(body, b"")
        self.assertEqual(r.responseCode, 204)
        self.assertEqual(sent(r, "Upload-Offset"), "42")
        self.assertEqual(sent(r, "Upload-Expires"), "Tue, 02 Jan 2024 03:04:05 GMT")

    def test_finishedUploadHasNoExpiry(self) -> None:
        r = request()
        answerWrite(r, record(offset=100, expires=EPOCH, state=COMPLETE))
        self.assertEqual((r.responseCode, sent(r, "Upload-Offset")), (204, "100"))
        self.assertIsNone(sent(r, "Upload-Expires"))


class AnswerHeadTests(unittest.TestCase):
    def test_lengthOffsetMetadataExpiry(self) -> None:
        r = request()
        raw = f"filename {b64('a.txt')}"
        body = answerHead(r, record(offset=10, length=100, expires=EPOCH, extra={"tus_metadata": raw}))
        self.assertEqual(body, b"")
        self.assertEqual(r.responseCode, 200)
        self.assertEqual(sent(r, "Cache-Control"), "no-store")
        self.assertEqual(sent(r, "Upload-Offset"), "10")
        self.assertEqual(sent(r, "Upload-Length"), "100")
        self.assertIsNone(sent(r, "Upload-Defer-Length"))
        self.assertEqual(sent(r, "Upload-Metadata"), raw)
        self.assertEqual(sent(r, "Upload-Expires"), "Tue, 02 Jan 2024 03:04:05 GMT")

    def test_deferredLength(self) -> None:
        r = request()
        answerHead(r, record(offset=0, length=None))
        self.assertEqual(sent(r, "Upload-Defer-Length"), "1")
        self.assertIsNone(sent(r, "Upload-Length"))
        self.assertEqual(sent(r, "Upload-Offset"), "0")

    def test_offsetHidden(self) -> None:
        r = request()
        answerHead(r, record(offset=10, length=100), offset=False)
        self.assertIsNone(sent(r, "Upload-Offset"))
        self.assertEqual(sent(r, "Upload-Length"), "100")
        self.assertEqual(sent(r, "Cache-Control"), "no-store")

    def test_noMetadataNoExpiry(self) -> None:
        for extra in ({}, {"tus_metadata": ""}):
            r = request()
            answerHead(r, record(offset=5, extra=extra))
            self.assertIsNone(sent(r, "Upload-Metadata"))
            self.assertIsNone(sent(r, "Upload-Expires"))

    def test_completeUploadHasNoExpiry(self) -> None:
        r = request()
        answerHead(r, record(offset=100, length=100, expires=EPOCH, state=COMPLETE))
        self.assertIsNone(sent(r, "Upload-Expires"))
        self.assertEqual(sent(r, "Upload-Offset"), "100")
