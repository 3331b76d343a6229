"""
chunkd.page: the upload page and its JSON on a real chunkd Site on a
listening socket, through treq -- the page and its files without a token,
an upload's size and sha256 only to its own subject, the download of a
published upload, what the page never answers (other clients' Resumable.js
uploads, anything when C{ui.enabled} is off), and the tus routes at C{/}
left as they were.  (The page driven in Chromium: tests/interop/test_ui.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Dict, Optional
from urllib.parse import urlencode

import jwt
from twisted.internet import defer

from chunkd.config import ConfigError, loadConfig
from chunkd.protocols.resumable import RESUMABLE, uploadIdFor
from tests.helpers import TUS, TusTestCase, h

SECRET = "a-secret-of-at-least-thirty-two-bytes!!"
PAGE_ID = "chunkd-ui-" + "0123456789abcdef" * 2


class PageTestCase(TusTestCase):
    @defer.inlineCallbacks
    def get(self, path: str, headers: Optional[Dict[str, str]] = None) -> Any:
        response = yield self.client.get(self.url(path), headers=headers or {})
        response.body_ = yield response.content()
        return response

    @defer.inlineCallbacks
    def tusUpload(self, data: bytes, headers: Optional[Dict[str, str]] = None) -> Any:
        uploadId = yield self.createId(len(data), headers)
        response = yield self.patch(uploadId, 0, data, headers)
        self.assertEqual(response.code, 204, response.text_)
        return uploadId

    @defer.inlineCallbacks
    def resumableUpload(self, data: bytes, identifier: str, headers: Optional[Dict[str, str]] = None) -> Any:
        """One chunk in octet mode, as the page sends it; the upload's id."""
        params = {
            "resumableChunkNumber": 1, "resumableChunkSize": 1 << 20, "resumableCurrentChunkSize": len(data),
            "resumableTotalSize": len(data), "resumableType": "text/plain", "resumableIdentifier": identifier,
            "resumableFilename": "notes.txt", "resumableRelativePath": "notes.txt", "resumableTotalChunks": 1,
        }
        response = yield self.client.post(self.url("/resumable?" + urlencode(params)), data=data,
                                          headers=dict(headers or {}, **{"Content-Type": "application/octet-stream"}))
        answer = json.loads((yield response.content()))
        self.assertEqual((response.code, answer["complete"]), (200, True))
        return answer["uploadId"]


class PageTests(PageTestCase):
    @defer.inlineCallbacks
    def test_thePageAndItsFiles(self) -> Any:
        page = yield self.get("/")
        self.assertEqual(page.code, 200)
        self.assertEqual(h(page, "content-type"), "text/html; charset=utf-8")
        self.assertIn("script-src 'self'", h(page, "content-security-policy"))
        self.assertIn("frame-ancestors 'none'", h(page, "content-security-policy"))
        self.assertIn(b'<script src="_ui/app.js">', page.body_)
        # What the script needs to know, as paths relative to the page.
        self.assertIn(b"data-config=\"{&quot;tus&quot;: &quot;files/&quot;, &quot;resumable&quot;: "
                      b"&quot;resumable&quot;, &quot;api&quot;: &quot;_ui&quot;, &quot;auth&quot;: &quot;off&quot;",
                      page.body_)
        script = yield self.get("/_ui/app.js")
        self.assertEqual((script.code, h(script, "content-type")), (200, "text/javascript; charset=utf-8"))
        self.assertIn(b"Tus-Resumable", script.body_)
        styles = yield self.get("/_ui/style.css")
        self.assertEqual((styles.code, h(styles, "content-type")), (200, "text/css; charset=utf-8"))
        for response in (page, script, styles):
            self.assertEqual(h(response, "x-content-type-options"), "nosniff")
        head = yield self.client.head(self.url("/"))
        yield head.content()
        self.assertEqual(head.code, 200)

    @defer.inlineCallbacks
    def test_aPercentEncodedAssetNameIsTheSameAsset(self) -> Any:
        """
        Routing decodes the path: /_ui/app%2ejs is the script (it was a 500
        and a traceback in the log, for anyone, without a token).
        """
        script = yield self.get("/_ui/app%2ejs")
        self.assertEqual(script.code, 200)
        self.assertIn(b"Tus-Resumable", script.body_)
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_tusAndPreflightsAtTheRootAreUntouched(self) -> Any:
        preflight = yield self.client.request("OPTIONS", self.url("/"))
        yield preflight.content()
        self.assertEqual(preflight.code, 200)
        options = yield self.client.request("OPTIONS", self.url("/files/"), headers=TUS)
        yield options.content()
        self.assertEqual((options.code, h(options, "tus-version")), (200, "1.0.0"))
        post = yield self.client.post(self.url("/"))
        yield post.content()
        self.assertEqual(post.code, 405)

    @defer.inlineCallbacks
    def test_aTusUploadsSizeAndSha256(self) -> Any:
        data = os.urandom(100000)
        uploadId = yield self.tusUpload(data, {"Upload-Metadata": "filename aG9saWRheS5qcGc="})
        response = yield self.get(f"/_ui/uploads/{uploadId}")
        self.assertEqual((response.code, h(response, "content-type")), (200, "application/json"))
        self.assertEqual(h(response, "cache-control"), "no-store")
        self.assertEqual(json.loads(response.body_), {
            "id": uploadId, "protocol": "tus", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "filename": "holiday.jpg", "download": self.url(f"/files/{uploadId}"),
        })
        self.assertEqual(self.store.get(uploadId).sha256, hashlib.sha256(data).hexdigest())
        # The published-file route is for published uploads only.
        response = yield self.get(f"/_ui/uploads/{uploadId}/file")
        self.assertEqual(response.code, 409)

    @defer.inlineCallbacks
    def test_unfinishedUnknownAndGone(self) -> Any:
        uploadId = yield self.createId(10)
        response = yield self.get(f"/_ui/uploads/{uploadId}")
        self.assertEqual((response.code, response.body_), (409, b"the upload is not finished\n"))
        response = yield self.get("/_ui/uploads/" + "0" * 32)
        self.assertEqual(response.code, 404)
        response = yield self.get("/_ui/uploads/..%2f..%2fetc%2fpasswd")
        self.assertIn(response.code, (404, 405))
        yield self.client.delete(self.url(f"/files/{uploadId}"), headers=TUS)
        response = yield self.get(f"/_ui/uploads/{uploadId}")
        self.assertEqual(response.code, 410)

    @defer.inlineCallbacks
    def test_aPublishedResumableUpload(self) -> Any:
        data = b"remember the milk\n" * 500
        uploadId = yield self.resumableUpload(data, PAGE_ID)
        response = yield self.get(f"/_ui/uploads/{uploadId}")
        answer = json.loads(response.body_)
        sidecar = self.store.get(uploadId).published
        assert sidecar is not None
        self.assertEqual(answer, {
            "id": uploadId, "protocol": "resumable", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "filename": "notes.txt", "download": self.url(f"/_ui/uploads/{uploadId}/file"),
        })
        self.assertEqual(sidecar.sha256, answer["sha256"])
        download = yield self.get(f"/_ui/uploads/{uploadId}/file")
        self.assertEqual((download.code, download.body_), (200, data))
        self.assertEqual(h(download, "content-disposition"),
                         "attachment; filename=\"notes.txt\"; filename*=UTF-8''notes.txt")
        self.assertEqual(h(download, "x-content-type-options"), "nosniff")
        ranged = yield self.get(f"/_ui/uploads/{uploadId}/file", {"Range": "bytes=0-5"})
        self.assertEqual((ranged.code, ranged.body_), (206, b"rememb"))
        # The application took the file away: gone, not an error.
        os.unlink(sidecar.path)
        download = yield self.get(f"/_ui/uploads/{uploadId}/file")
        self.assertEqual(download.code, 410)

    @defer.inlineCallbacks
    def test_otherClientsResumableUploadsAreNotAnswered(self) -> Any:
        """
        Resumable.js derives identifiers from a file's size and name: their
        upload ids can be guessed, so the page answers only for its own
        random identifiers.
        """
        data = b"quarterly figures"
        identifier = f"{len(data)}-figurestxt"
        uploadId = yield self.resumableUpload(data, identifier)
        self.assertEqual(uploadId, uploadIdFor(RESUMABLE, identifier))
        for path in (f"/_ui/uploads/{uploadId}", f"/_ui/uploads/{uploadId}/file"):
            response = yield self.get(path)
            self.assertEqual((response.code, response.body_), (404, b"no such upload\n"))


class PageAtAPathTests(PageTestCase):
    overrides = {"ui.path": "/upload/", "tus.relative_location": True}

    @defer.inlineCallbacks
    def test_servedAtItsPath(self) -> Any:
        page = yield self.get("/upload/")
        self.assertEqual(page.code, 200)
        self.assertIn(b"&quot;tus&quot;: &quot;../files/&quot;", page.body_)
        self.assertIn(b"&quot;api&quot;: &quot;_ui&quot;", page.body_)
        script = yield self.get("/upload/_ui/app.js")
        self.assertEqual(script.code, 200)
        root = yield self.get("/")
        self.assertEqual(root.code, 404)  # nothing is served at / then

    def test_aPathTakenByAProtocolIsRefused(self) -> None:
        error = self.assertRaises(ConfigError, loadConfig, None, {"ui.path": "/files"})
        self.assertEqual(error.key, "path")
        loadConfig(None, {"ui.path": "/files", "ui.enabled": False})
        error = self.assertRaises(ConfigError, loadConfig, None, {"ui.chunk_size": 100})
        self.assertEqual(error.key, "ui.chunk_size")


class PageOffTests(PageTestCase):
    overrides = {"ui.enabled": False}

    @defer.inlineCallbacks
    def test_nothingIsServed(self) -> Any:
        data = b"private"
        uploadId = yield self.tusUpload(data)
        published = yield self.resumableUpload(data, PAGE_ID)
        for path in ("/", "/_ui/app.js", f"/_ui/uploads/{uploadId}", f"/_ui/uploads/{published}/file"):
            response = yield self.get(path)
            self.assertIn(response.code, (404, 405), path)
            self.assertNotIn(data, response.body_)
        self.assertIsNone(self.store.get(uploadId).sha256)


class PageAuthTests(PageTestCase):
    overrides = {"auth.required": True, "auth.tokens": {"alice-token": "alice", "bob-token": "bob"},
                 "auth.jwt.secret": SECRET}
    alice = {"Authorization": "Bearer alice-token"}

    @defer.inlineCallbacks
    def test_thePageNeedsNoTokenItsDataDoes(self) -> Any:
        page = yield self.get("/")
        self.assertEqual(page.code, 200)
        self.assertIn(b"&quot;auth&quot;: &quot;required&quot;", page.body_)
        script = yield self.get("/_ui/app.js")
        self.assertEqual(script.code, 200)
        uploadId = yield self.tusUpload(b"alice's", self.alice)
        published = yield self.resumableUpload(b"alice's too", PAGE_ID, self.alice)
        for path in (f"/_ui/uploads/{uploadId}", f"/_ui/uploads/{published}/file"):
            anonymous = yield self.get(path)
            self.assertEqual((anonymous.code, h(anonymous, "www-authenticate")), (401, 'Bearer realm="chunkd"'))
            # Another subject's upload does not exist for bob.
            bob = yield self.get(path, {"Authorization": "Bearer bob-token"})
            self.assertEqual((bob.code, bob.body_), (404, b"no such upload\n"))
            mine = yield self.get(path, self.alice)
            self.assertEqual(mine.code, 200)

    @defer.inlineCallbacks
    def test_aTokensProtocolsAreCheckedAgainstTheUpload(self) -> Any:
        """
        The JSON answers for uploads of every protocol the page uses: a
        token limited to tus reads its tus uploads there, not others.
        """
        def token(protocols: Any) -> Dict[str, str]:
            claims = {"sub": "carol", "exp": int(time.time()) + 600, "chunkd": {"protocols": protocols}}
            return {"Authorization": "Bearer " + jwt.encode(claims, SECRET, "HS256")}

        uploadId = yield self.tusUpload(b"carol's", token(["tus"]))
        published = yield self.resumableUpload(b"carol's too", PAGE_ID, token(["resumable"]))
        response = yield self.get(f"/_ui/uploads/{uploadId}", token(["tus"]))
        self.assertEqual(response.code, 200)
        response = yield self.get(f"/_ui/uploads/{published}", token(["tus"]))
        self.assertEqual((response.code, response.body_),
                         (403, b"this token does not allow the resumable protocol\n"))
