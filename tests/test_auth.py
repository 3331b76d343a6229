"""
Bearer tokens and per-subject isolation: L{chunkd.auth.Authenticator} on
its own (static tokens, JWTs signed with a secret and with RSA, EC and
Ed25519 keys made in the test, every way a token can be bad), then a real
chunkd on a listening socket driven through treq for every protocol: the
401/403/404/413 answers, two subjects who cannot see each other's uploads,
Resumable.js identifiers scoped by subject, the subject in sidecars and
hooks' payloads, CORS preflights and /health without a token, and the
metrics' own token.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from typing import Any, Dict, Optional
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet import defer
from twisted.trial import unittest

from chunkd.auth import ANONYMOUS, Authenticator, Principal
from chunkd.config import ConfigError, loadConfig
from chunkd.errors import Forbidden, TooLarge, Unauthorized
from tests.helpers import ServerTestCase, h

SECRET = "s3cret-that-is-at-least-32-bytes-long!"
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


def mint(claims: Dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    """A token as an application's backend mints it with PyJWT."""
    base = {"exp": int(time.time()) + 3600}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, key, algorithm=algorithm)


def bearer(token: str) -> Dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class AuthenticatorTests(unittest.TestCase):
    """
    Tokens in, principals or named errors out.
    """

    def authenticator(self, **auth: object) -> Authenticator:
        return Authenticator(loadConfig(None, {f"auth.{k}": v for k, v in auth.items()}))

    def assertInvalid(self, authenticator: Authenticator, header: Optional[str], fragment: str) -> None:
        error = self.assertRaises(Unauthorized, authenticator.authenticate, header)
        self.assertIn(fragment, error.reason)
        self.assertIn('error="invalid_token"', error.headers["WWW-Authenticate"])

    def test_noTokenWithoutRequiredIsAnonymous(self) -> None:
        self.assertIs(self.authenticator().authenticate(None), ANONYMOUS)

    def test_noTokenWhereRequired(self) -> None:
        error = self.assertRaises(Unauthorized, self.authenticator(
            required=True, tokens={"abc": "backup"}).authenticate, None)
        self.assertEqual(error.headers["WWW-Authenticate"], 'Bearer realm="chunkd"')

    def test_staticToken(self) -> None:
        authenticator = self.authenticator(tokens={"Zk3-static": "nightly-backup"})
        self.assertEqual(authenticator.authenticate("Bearer Zk3-static"), Principal("nightly-backup"))
        self.assertEqual(authenticator.authenticate("bearer   Zk3-static "), Principal("nightly-backup"))
        self.assertInvalid(authenticator, "Bearer Zk3-stati", "unknown token")
        self.assertInvalid(authenticator, "Basic Zk3-static", "Bearer")
        self.assertInvalid(authenticator, "Bearer", "Bearer")

    def test_hmacJWT(self) -> None:
        authenticator = self.authenticator(**{"jwt.secret": SECRET})
        token = mint({"sub": "alice", "chunkd": {"protocols": ["tus"], "max_size": 1000,
                                                 "upload": "a" * 32}})
        self.assertEqual(authenticator.authenticate(f"Bearer {token}"),
                         Principal("alice", frozenset(["tus"]), 1000, "a" * 32))
        for algorithm in ("HS384", "HS512"):
            token = mint({"sub": "bob"}, algorithm=algorithm)
            self.assertEqual(authenticator.authenticate(f"Bearer {token}").subject, "bob")

    def test_badJWTs(self) -> None:
        authenticator = self.authenticator(**{"jwt.secret": SECRET, "jwt.leeway": "0s"})
        self.assertInvalid(authenticator, "Bearer " + mint({"sub": "a"}, key=SECRET + "x"), "bad signature")
        self.assertInvalid(authenticator, "Bearer " + mint({"sub": "a", "exp": int(time.time()) - 10}),
                           "expired")
        self.assertInvalid(authenticator, "Bearer " + mint({"sub": None}), "'sub'")
        self.assertInvalid(authenticator, "Bearer " + jwt.encode({"sub": "a"}, SECRET, "HS256"), "'exp'")
        self.assertInvalid(authenticator, "Bearer " + mint({"sub": ""}), "sub")
        self.assertInvalid(authenticator, "Bearer " + mint({"sub": "a", "chunkd": []}), "object")
        self.assertInvalid(authenticator, "Bearer " + mint({"sub": "a", "chunkd": {"protocols": "tus"}}),
                           "protocols")
        self.assertInvalid(authenticator, "Bearer " + mint({"sub": "a", "chunkd": {"max_size": -1}}),
                           "max_size")
        self.assertInvalid(authenticator, "Bearer " + mint({"sub": "a", "chunkd": {"upload": 5}}), "upload")
        self.assertInvalid(authenticator, "Bearer not.a.jwt", "cannot be read")
        # "none" is never accepted, whatever the header says.
        unsigned = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, None, algorithm="none")
        self.assertInvalid(authenticator, f"Bearer {unsigned}", "algorithm")

    def test_leeway(self) -> None:
        token = mint({"sub": "a", "exp": int(time.time()) - 5})
        self.assertEqual(self.authenticator(**{"jwt.secret": SECRET}).authenticate(f"Bearer {token}").subject,
                         "a")

    def test_audienceAndIssuer(self) -> None:
        authenticator = self.authenticator(**{"jwt.secret": SECRET, "jwt.audience": "chunkd",
                                              "jwt.issuer": "https://app.example"})
        good = mint({"sub": "a", "aud": "chunkd", "iss": "https://app.example"})
        self.assertEqual(authenticator.authenticate(f"Bearer {good}").subject, "a")
        self.assertInvalid(authenticator, "Bearer " + mint({"sub": "a", "aud": "other",
                                                           "iss": "https://app.example"}), "audience")
        self.assertInvalid(authenticator, "Bearer " + mint({"sub": "a", "aud": "chunkd",
                                                           "iss": "https://evil.example"}), "issuer")
        self.assertInvalid(authenticator, "Bearer " + mint({"sub": "a", "iss": "https://app.example"}),
                           "'aud'")

    def publicKey(self, private: Any) -> str:
        pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        fd, path = tempfile.mkstemp(suffix=".pem")
        os.write(fd, pem)
        os.close(fd)
        self.addCleanup(os.unlink, path)
        return path

    def test_publicKeyAlgorithms(self) -> None:
        for private, algorithm in (
            (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
            (ec.generate_private_key(ec.SECP256R1()), "ES256"),
            (ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
        ):
            path = self.publicKey(private)
            authenticator = self.authenticator(**{"jwt.public_key": path})
            token = mint({"sub": algorithm}, key=private, algorithm=algorithm)
            self.assertEqual(authenticator.authenticate(f"Bearer {token}").subject, algorithm)
            other = ec.generate_private_key(ec.SECP256R1())
            self.assertInvalid(authenticator, "Bearer " + mint({"sub": "x"}, key=other, algorithm="ES256"),
                               "")

    def test_publicKeyTextIsNoHMACSecret(self) -> None:
        """
        The classic confusion: an HS256 token "signed" with the public
        key's PEM text must not verify against that public key.
        """
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path = self.publicKey(private)
        with open(path, "rb") as f:
            pem = f.read()
        forged = jwt.api_jws.PyJWS().encode(
            json.dumps({"sub": "admin", "exp": int(time.time()) + 60}).encode(), key=b"x", algorithm="HS256")
        authenticator = self.authenticator(**{"jwt.public_key": path})
        self.assertInvalid(authenticator, f"Bearer {forged}", "")
        self.assertTrue(pem.startswith(b"-----BEGIN PUBLIC KEY-----"))

    def test_configMistakes(self) -> None:
        for overrides, key in (
            ({"auth.jwt.secret": "short"}, "auth.jwt.secret"),
            ({"auth.jwt.public_key": "/nonexistent.pem"}, "auth.jwt.public_key"),
            ({"auth.jwt.public_key": __file__}, "auth.jwt.public_key"),
            ({"auth.required": True}, "auth.required"),
        ):
            error = self.assertRaises(ConfigError, loadConfig, None, overrides)
            self.assertEqual(error.key, key)


class PrincipalTests(unittest.TestCase):
    def test_restrictions(self) -> None:
        principal = Principal("a", frozenset(["tus"]), 100, "f" * 32)
        principal.checkProtocol("tus")
        self.assertRaises(Forbidden, principal.checkProtocol, "resumable")
        principal.checkSize(100, "Upload-Length")
        self.assertRaises(TooLarge, principal.checkSize, 101, "Upload-Length")
        principal.checkUpload("f" * 32)
        self.assertRaises(Forbidden, principal.checkUpload, "e" * 32)
        self.assertRaises(Forbidden, principal.checkUpload, None)
        ANONYMOUS.checkProtocol("flow")
        ANONYMOUS.checkSize(10**15, "x")
        ANONYMOUS.checkUpload(None)


class AuthServerTestCase(ServerTestCase):
    overrides = {
        "auth.required": True,
        "auth.tokens": {"static-backup-token": "nightly-backup"},
        "auth.jwt.secret": SECRET,
        "cors.allowed_origins": ["https://app.example"],
    }

    @defer.inlineCallbacks
    def request(self, method: str, path: str, token: Optional[str] = None,
                headers: Optional[Dict[str, str]] = None, data: bytes = b"") -> Any:
        allHeaders = dict(headers or {})
        if token is not None:
            allHeaders.update(bearer(token))
        response = yield self.client.request(method, self.url(path), headers=allHeaders, data=data or None)
        response.body_ = yield response.content()
        return response

    @defer.inlineCallbacks
    def tusCreate(self, token: Optional[str], length: int = 10, **headers: str) -> Any:
        response = yield self.request("POST", "/files/", token, dict(TUS, **{"Upload-Length": str(length)},
                                                                     **headers))
        return response

    def idOf(self, response: Any) -> str:
        self.assertEqual(response.code, 201, response.body_)
        return h(response, "location").rsplit("/", 1)[1]


class TusAuthTests(AuthServerTestCase):
    @defer.inlineCallbacks
    def test_noTokenIs401WithChallenge(self) -> None:
        response = yield self.tusCreate(None)
        self.assertEqual(response.code, 401)
        self.assertEqual(h(response, "www-authenticate"), 'Bearer realm="chunkd"')
        self.assertEqual([files for _, _, files in os.walk(self.storage) if files], [])

    @defer.inlineCallbacks
    def test_badTokenIs401InvalidToken(self) -> None:
        response = yield self.tusCreate(mint({"sub": "a"}, key=SECRET + "!"))
        self.assertEqual(response.code, 401)
        self.assertIn('error="invalid_token"', h(response, "www-authenticate"))
        self.assertEqual(response.body_, b"invalid token: bad signature\n")

    @defer.inlineCallbacks
    def test_refusedBodyIsNotWritten(self) -> None:
        """
        A PATCH without a token is refused when its headers end: the body
        never reaches the upload.
        """
        alice = mint({"sub": "alice"})
        uploadId = self.idOf((yield self.tusCreate(alice)))
        response = yield self.request("PATCH", f"/files/{uploadId}", None,
                                      dict(TUS, **{"Upload-Offset": "0", "Content-Type": OCTETS}),
                                      b"x" * 10)
        self.assertEqual(response.code, 401)
        head = yield self.request("HEAD", f"/files/{uploadId}", alice, TUS)
        self.assertEqual(h(head, "upload-offset"), "0")

    @defer.inlineCallbacks
    def test_subjectsAreIsolated(self) -> None:
        """
        Bob sees Alice's upload exactly as an id that never existed: HEAD,
        PATCH, GET, DELETE and concatenating it are all 404s, the same as
        for an unknown id; after Alice deletes it, still 404 to Bob, 410
        to her.
        """
        alice, bob = mint({"sub": "alice"}), mint({"sub": "bob"})
        uploadId = self.idOf((yield self.tusCreate(alice, 5)))
        unknown = "0" * 32
        for target in (uploadId, unknown):
            head = yield self.request("HEAD", f"/files/{target}", bob, TUS)
            patch = yield self.request("PATCH", f"/files/{target}", bob,
                                       dict(TUS, **{"Upload-Offset": "0", "Content-Type": OCTETS}), b"hello")
            get = yield self.request("GET", f"/files/{target}", bob, TUS)
            delete = yield self.request("DELETE", f"/files/{target}", bob, TUS)
            self.assertEqual([r.code for r in (head, patch, get, delete)], [404] * 4)
            self.assertEqual((patch.body_, delete.body_), (b"no such upload\n", b"no such upload\n"))
        final = yield self.request("POST", "/files/", bob, dict(TUS, **{
            "Upload-Concat": f"final;{self.url('/files/' + uploadId)}"}))
        self.assertEqual(final.code, 400, final.body_)
        self.assertIn(b"does not exist", final.body_)
        # Alice's upload is untouched, and hers alone.
        patch = yield self.request("PATCH", f"/files/{uploadId}", alice,
                                   dict(TUS, **{"Upload-Offset": "0", "Content-Type": OCTETS}), b"hello")
        self.assertEqual(patch.code, 204)
        delete = yield self.request("DELETE", f"/files/{uploadId}", alice, TUS)
        self.assertEqual(delete.code, 204)
        self.assertEqual((yield self.request("HEAD", f"/files/{uploadId}", bob, TUS)).code, 404)
        self.assertEqual((yield self.request("HEAD", f"/files/{uploadId}", alice, TUS)).code, 410)

    @defer.inlineCallbacks
    def test_staticTokenSubject(self) -> None:
        uploadId = self.idOf((yield self.tusCreate("static-backup-token")))
        self.assertEqual(self.store.get(uploadId).subject, "nightly-backup")
        self.assertEqual((yield self.request("HEAD", f"/files/{uploadId}", mint({"sub": "alice"}),
                                             TUS)).code, 404)
        self.assertEqual((yield self.request("HEAD", f"/files/{uploadId}", "static-backup-token",
                                             TUS)).code, 200)

    @defer.inlineCallbacks
    def test_claims(self) -> None:
        """
        C{chunkd.protocols} forbids other protocols (403), C{max_size}
        caps lengths (413, for deferred lengths too), C{upload} pins the
        token to one upload (403 for any other, and for creating).
        """
        tusOnly = mint({"sub": "a", "chunkd": {"protocols": ["resumable"]}})
        self.assertEqual((yield self.tusCreate(tusOnly)).code, 403)
        small = mint({"sub": "a", "chunkd": {"max_size": 100}})
        self.assertEqual((yield self.tusCreate(small, 100)).code, 201)
        tooBig = yield self.tusCreate(small, 101)
        self.assertEqual(tooBig.code, 413)
        self.assertIn(b"token's maximum", tooBig.body_)
        deferred = self.idOf((yield self.request("POST", "/files/", small,
                                                 dict(TUS, **{"Upload-Defer-Length": "1"}))))
        over = yield self.request("PATCH", f"/files/{deferred}", small,
                                  dict(TUS, **{"Upload-Offset": "0", "Content-Type": OCTETS}), b"x" * 101)
        self.assertEqual(over.code, 413)
        alice = mint({"sub": "a"})
        mine, other = self.idOf((yield self.tusCreate(alice))), self.idOf((yield self.tusCreate(alice)))
        pinned = mint({"sub": "a", "chunkd": {"upload": mine}})
        self.assertEqual((yield self.request("HEAD", f"/files/{mine}", pinned, TUS)).code, 200)
        self.assertEqual((yield self.request("HEAD", f"/files/{other}", pinned, TUS)).code, 403)
        self.assertEqual((yield self.tusCreate(pinned)).code, 403)

    @defer.inlineCallbacks
    def test_preflightAndOptionsNeedNoToken(self) -> None:
        response = yield self.request("OPTIONS", "/files/", None, {
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, tus-resumable"})
        self.assertEqual(response.code, 200)
        self.assertEqual(h(response, "tus-version"), "1.0.0")
        # The browser may then send the token, and read why one was refused.
        self.assertEqual(h(response, "access-control-allow-headers"), "authorization, tus-resumable")
        self.assertIn("WWW-Authenticate", h(response, "access-control-expose-headers"))

    @defer.inlineCallbacks
    def test_healthIsOpen(self) -> None:
        response = yield self.request("GET", "/health")
        self.assertEqual(response.code, 200, response.body_)

    @defer.inlineCallbacks
    def test_facadeFinalizeIsTheSubjectsAndSaysSo(self) -> None:
        """
        A facade upload finalized by its subject: the sidecar names the
        subject; another subject's finalize with the right upload token
        is still 404.
        """
        alice, bob = mint({"sub": "alice"}), mint({"sub": "bob"})
        created = yield self.request("POST", "/uploads", alice, dict(TUS, **{"Upload-Length": "5"}))
        uploadId = self.idOf(created).rsplit("/", 1)[-1]
        uploadToken = h(created, "upload-token")
        patch = yield self.request("PATCH", f"/uploads/{uploadId}", alice,
                                   dict(TUS, **{"Upload-Offset": "0", "Content-Type": OCTETS}), b"hello")
        self.assertEqual(patch.code, 204, patch.body_)
        body = json.dumps({"uploadId": uploadId, "filename": "clip.mp4", "uploadToken": uploadToken}).encode()
        stolen = yield self.request("POST", "/uploads/finalize", bob, {"Content-Type": "application/json"}, body)
        self.assertEqual(stolen.code, 404, stolen.body_)
        done = yield self.request("POST", "/uploads/finalize", alice, {"Content-Type": "application/json"}, body)
        self.assertEqual(done.code, 200, done.body_)
        with open(os.path.join(self.storage, "complete", "clip.mp4.json")) as f:
            self.assertEqual(json.load(f)["subject"], "alice")


class HostileSubjectTests(AuthServerTestCase):
    """
    A subject is text from a token: it is stored and compared, never made
    into a path, so any text works and stays apart from any other.
    """

    overrides = dict(AuthServerTestCase.overrides, **{"limits.max_active_uploads": 5})

    @defer.inlineCallbacks
    def test_hostileSubjects(self) -> None:
        hostile = ["../../etc/passwd", "/abs\\path", "nul\x00inside", "rtl\u202eexe.txt",
                   "\x1b[31mred", "x" * 10000, "\udcff"]
        ids = {}
        for subject in hostile:
            token = mint({"sub": subject})
            ids[subject] = self.idOf((yield self.tusCreate(token, 5)))
            self.assertEqual(self.store.get(ids[subject]).subject, subject)
        for subject, uploadId in ids.items():
            for other in hostile:
                code = (yield self.request("HEAD", f"/files/{uploadId}", mint({"sub": other}), TUS)).code
                self.assertEqual(code, 200 if other == subject else 404, (subject[:20], other[:20]))
        # Nothing but the store's own layout, with hashed subject directories.
        self.assertEqual(sorted(os.listdir(self.storage)), ["subjects", "uploads"])
        for entry in os.listdir(os.path.join(self.storage, "subjects")):
            self.assertRegex(entry, "^[0-9a-f]{32}$")


class TwoSubjectsOneIdentifierTests(AuthServerTestCase):
    """
    Resumable.js and flow.js derive identifiers from the file's size and
    name, so two users uploading "report.pdf" send the same one: they must
    get two uploads.
    """

    def chunkQuery(self, prefix: str, data: bytes) -> str:
        return urlencode({
            f"{prefix}ChunkNumber": 1, f"{prefix}ChunkSize": len(data),
            f"{prefix}CurrentChunkSize": len(data), f"{prefix}TotalSize": len(data),
            f"{prefix}TotalChunks": 1, f"{prefix}Identifier": f"{len(data)}-reportpdf",
            f"{prefix}Filename": "report.pdf",
        })

    @defer.inlineCallbacks
    def test_sameIdentifierTwoSubjects(self) -> None:
        for mount, prefix in (("/resumable", "resumable"), ("/flow", "flow")):
            alice, bob = mint({"sub": "alice"}), mint({"sub": "bob"})
            mine, theirs = b"alice's report", b"bobs's report!"
            self.assertEqual(len(mine), len(theirs))
            # Bob asks first whether Alice's chunk is there: it is not his.
            sent = yield self.request("POST", f"{mount}?{self.chunkQuery(prefix, mine)}", alice, data=mine)
            self.assertEqual(sent.code, 200, sent.body_)
            test = yield self.request("GET", f"{mount}?{self.chunkQuery(prefix, theirs)}", bob)
            self.assertEqual(test.code, 204, test.body_)
            sent = yield self.request("POST", f"{mount}?{self.chunkQuery(prefix, theirs)}", bob, data=theirs)
            self.assertEqual(sent.code, 200, sent.body_)
            sidecars = {}
            complete = os.path.join(self.storage, "complete")
            for name in os.listdir(complete):
                if name.endswith(".json"):
                    with open(os.path.join(complete, name)) as f:
                        info = json.load(f)
                    if info["protocol"] == prefix:
                        with open(os.path.join(complete, name[:-len(".json")]), "rb") as f:
                            sidecars[info["subject"]] = (f.read(), info["sha256"])
            self.assertEqual(sidecars, {
                "alice": (mine, hashlib.sha256(mine).hexdigest()),
                "bob": (theirs, hashlib.sha256(theirs).hexdigest()),
            })

    @defer.inlineCallbacks
    def test_protocolClaimNamesTheDialect(self) -> None:
        flowOnly = mint({"sub": "a", "chunkd": {"protocols": ["flow"]}})
        data = b"0123456789"
        refused = yield self.request("POST", f"/resumable?{self.chunkQuery('resumable', data)}", flowOnly,
                                     data=data)
        self.assertEqual(refused.code, 403)
        taken = yield self.request("POST", f"/flow?{self.chunkQuery('flow', data)}", flowOnly, data=data)
        self.assertEqual(taken.code, 200, taken.body_)


class MetricsTokenTests(AuthServerTestCase):
    overrides = dict(AuthServerTestCase.overrides, **{"metrics.token": "scrape-me"})

    @defer.inlineCallbacks
    def test_metricsNeedTheirOwnToken(self) -> None:
        self.assertEqual((yield self.request("GET", "/metrics")).code, 401)
        # An upload token is not the metrics token.
        self.assertEqual((yield self.request("GET", "/metrics", mint({"sub": "a"}))).code, 401)
        response = yield self.request("GET", "/metrics", "scrape-me")
        self.assertEqual(response.code, 200)
        self.assertIn(b"chunkd_", response.body_)


class OptionalAuthTests(AuthServerTestCase):
    """
    Tokens configured but not required: without one, chunkd works as
    without auth (anonymous uploads), and anonymous and token holders do
    not see each other's uploads.
    """

    overrides = {"auth.jwt.secret": SECRET}

    @defer.inlineCallbacks
    def test_anonymousAndSubjectApart(self) -> None:
        anonymous = self.idOf((yield self.tusCreate(None)))
        alice = mint({"sub": "alice"})
        self.assertEqual((yield self.request("HEAD", f"/files/{anonymous}", None, TUS)).code, 200)
        self.assertEqual((yield self.request("HEAD", f"/files/{anonymous}", alice, TUS)).code, 404)
        hers = self.idOf((yield self.tusCreate(alice)))
        self.assertEqual((yield self.request("HEAD", f"/files/{hers}", None, TUS)).code, 404)
        # A token that is sent is checked even here.
        self.assertEqual((yield self.tusCreate("garbage")).code, 401)


class ActiveUploadLimitTests(AuthServerTestCase):
    """
    C{limits.max_active_uploads}: per subject, 429 with Retry-After past
    it; a finished upload frees its place; anonymous uploads (no subject)
    are not counted.
    """

    overrides = dict(AuthServerTestCase.overrides, **{"limits.max_active_uploads": 2})

    @defer.inlineCallbacks
    def test_limitPerSubject(self) -> None:
        alice, bob = mint({"sub": "alice"}), mint({"sub": "bob"})
        first = self.idOf((yield self.tusCreate(alice, 5)))
        self.idOf((yield self.tusCreate(alice, 5)))
        refused = yield self.tusCreate(alice, 5)
        self.assertEqual(refused.code, 429, refused.body_)
        self.assertEqual(h(refused, "retry-after"), "30")
        self.assertIn(b"unfinished uploads", refused.body_)
        # Resumable.js counts too: a new file is a new upload.
        data = b"0123456789"
        query = urlencode({"resumableChunkNumber": 1, "resumableChunkSize": 10, "resumableCurrentChunkSize": 10,
                           "resumableTotalSize": 10, "resumableTotalChunks": 1,
                           "resumableIdentifier": "10-x", "resumableFilename": "x"})
        chunk = yield self.request("POST", f"/resumable?{query}", alice, data=data)
        self.assertEqual(chunk.code, 429, chunk.body_)
        self.assertEqual((yield self.tusCreate(bob, 5)).code, 201)
        finished = yield self.request("PATCH", f"/files/{first}", alice,
                                      dict(TUS, **{"Upload-Offset": "0", "Content-Type": OCTETS}), b"hello")
        self.assertEqual(finished.code, 204)
        self.assertEqual((yield self.tusCreate(alice, 5)).code, 201)


class AnonymousNotCountedTests(AuthServerTestCase):
    overrides = {"limits.max_active_uploads": 1}

    @defer.inlineCallbacks
    def test_anonymousUploadsHaveNoSubjectToCount(self) -> None:
        for _ in range(3):
            self.idOf((yield self.tusCreate(None)))


class NoAuthConfiguredTests(AuthServerTestCase):
    """
    No token configured: an Authorization header belongs to someone else
    (a proxy's basic auth, a gateway's token) and changes nothing.
    """

    overrides: Dict[str, object] = {}

    @defer.inlineCallbacks
    def test_foreignAuthorizationIsIgnored(self) -> None:
        response = yield self.request("POST", "/files/", None, dict(TUS, **{
            "Upload-Length": "5", "Authorization": "Basic dXNlcjpwYXNz"}))
        self.assertEqual(response.code, 201, response.body_)
        response = yield self.tusCreate("some-gateway-token")
        self.assertEqual(response.code, 201, response.body_)
