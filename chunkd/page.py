"""
The upload page at C{ui.path} (C{/} by default): chunkd seen working in a
browser within a minute of installing it.

The page is three files shipped in the package (C{chunkd/ui/}): HTML, a
stylesheet and a script of our own -- a small tus client and a
Resumable.js-style chunker over XMLHttpRequest -- with no build step and
nothing fetched from anywhere else.  They load without a token (they hold
no upload data); everything under C{<path>/_ui/uploads/} does reveal upload
data, so it goes through the request's principal like every protocol
route: another subject's upload is not found.

What the page shows of a finished upload -- its size and its sha256 as
chunkd recorded it -- comes from one protocol-neutral JSON answer,
C{GET <path>/_ui/uploads/<id>}.  The sha256 of a published upload is its
publication's; a tus upload, which is never published, gets one hashed from
its file the first time it is asked for, and recorded
(L{chunkd.uploads.UploadService.sha256Of}).  Its download is tus's own
C{GET} (when C{tus.download} is on); a published Resumable.js upload's is
C{GET <path>/_ui/uploads/<id>/file}.

Only uploads the page itself can have made are answered: tus uploads
(whose ids are random) and Resumable.js uploads whose identifier is the
page's random C{chunkd-ui-<32 hex>}.  Other Resumable.js clients derive
identifiers from a file's name and size, so their upload ids can be
guessed, and this route must not become a way to read their files.
"""

from __future__ import annotations

import functools
import html
import json
import os
import posixpath
import re
from typing import Any, Dict, List, Optional, Sequence

from twisted.web.static import File

from chunkd.config import Config
from chunkd.errors import Conflict, dataGone, noSuchUpload
from chunkd.protocols.resumable import RESUMABLE
from chunkd.protocols.tus import TUS, attachment, safeContentType
from chunkd.routes import Route
from chunkd.store import UploadRecord
from chunkd.uploads import UploadService
from chunkd.web import baseURL, setHeader

#: the page's files, inside the package
FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui")

#: the protocols the page uploads with
PAGE_PROTOCOLS = frozenset({TUS, RESUMABLE.name})

#: a Resumable.js identifier the page made: 128 random bits
PAGE_IDENTIFIER = re.compile(r"^chunkd-ui-[0-9a-f]{32}\Z")

#: the page talks to its own origin only, runs only its own script, and is
#: never framed
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
          "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


class UploadPage:
    """
    The page, its two static files, and its JSON, at C{config.ui.path}.
    """

    name = "ui"
    exposedHeaders: List[str] = []

    def __init__(self, config: Config, uploads: UploadService) -> None:
        self.uploads = uploads
        # "" for the default "/", so every route reads mount + "/...".
        self.mount = config.ui.path.rstrip("/")
        self.config = config
        # Read once, at start: a few kilobytes served from memory.
        self.assets: Dict[str, bytes] = {}
        for name in ("index.html", *_ASSETS):
            with open(os.path.join(FILES, name), "rb") as f:
                self.assets[name] = f.read()
        self.index = self.render(config)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.index = self.render(config)

    def routes(self) -> Sequence[Route]:
        api = self.mount + "/_ui"
        return [
            Route(self.mount + "/", ("GET",), self.page, public=True),
            *(Route(f"{api}/{name}", ("GET",), functools.partial(self.asset, name=name), public=True)
              for name in _ASSETS),
            Route(api + "/uploads/<upload_id>", ("GET",), self.describe, anyProtocol=True),
            Route(api + "/uploads/<upload_id>/file", ("GET",), self.download, anyProtocol=True),
        ]

    # -- the page ---------------------------------------------------------------

    def render(self, config: Config) -> bytes:
        """
        The page with what its script needs to know of this server, as
        paths relative to the page (a reverse proxy may mount chunkd under
        a prefix).
        """
        here = config.ui.path

        def relative(path: str) -> str:
            return posixpath.relpath(path, here)

        auth = config.auth
        settings = {
            "tus": relative(config.tus.path) + "/" if config.tus.enabled else None,
            "resumable": relative(config.resumable.path) if config.resumable.enabled else None,
            "api": relative(self.mount + "/_ui"),
            "auth": "required" if auth.required else
                    "optional" if auth.tokens or auth.jwt.secret or auth.jwt.public_key else "off",
            "chunkSize": config.ui.chunk_size,
            "maxChunks": config.resumable.max_chunks,
            "maxSize": config.limits.max_size,
        }
        attribute = html.escape(json.dumps(settings), quote=True).encode("utf-8")
        return self.assets["index.html"].replace(b"{{config}}", attribute)

    def page(self, request: Any) -> bytes:
        _static(request, "text/html; charset=utf-8")
        setHeader(request, "Content-Security-Policy", POLICY)
        setHeader(request, "Referrer-Policy", "no-referrer")
        return self.index

    def asset(self, request: Any, name: str) -> bytes:
        # Bound per route: the raw path may spell the name percent-encoded.
        _static(request, _ASSETS[name])
        return self.assets[name]

    # -- what the page may know of an upload ----------------------------------------

    def find(self, request: Any, uploadId: str) -> UploadRecord:
        """
        An upload the page could have made, of the asking subject, of a
        protocol its token allows.

        @raise UploadNotFound: not such an upload.
        @raise UploadGone: terminated or expired.
        @raise Forbidden: the token does not allow its protocol.
        """
        principal = request.principal
        record = self.uploads.find(uploadId, PAGE_PROTOCOLS, principal)
        principal.checkProtocol(record.protocol)
        if record.protocol == RESUMABLE.name and not PAGE_IDENTIFIER.match(
                str(record.extra.get("identifier", ""))):
            raise noSuchUpload()
        return record

    async def describe(self, request: Any, upload_id: str) -> bytes:
        """
        A finished upload as chunkd recorded it: C{id}, C{protocol},
        C{size}, C{sha256}, C{filename} and C{download} (a URL, or null when
        downloads are off).  An unfinished one is 409.
        """
        record = self.find(request, upload_id)
        sha256 = await self.uploads.sha256Of(record)
        published = record.published
        base = baseURL(request, self.config.network.trust_proxy)
        if published is not None:
            size = published.size
            download: Optional[str] = f"{base}{self.mount}/_ui/uploads/{record.id}/file"
        else:
            size = record.length or 0
            download = f"{base}{self.config.tus.path}/{record.id}" if self.config.tus.download else None
        answer = {
            "id": record.id,
            "protocol": record.protocol,
            "size": size,
            "sha256": sha256,
            "filename": record.metadata.get("filename"),
            "download": download,
        }
        request.setResponseCode(200)
        setHeader(request, "Content-Type", "application/json")
        setHeader(request, "Cache-Control", "no-store")
        return json.dumps(answer).encode("utf-8")

    def download(self, request: Any, upload_id: str) -> Any:
        """
        A published upload's file, as tus serves its downloads: byte
        ranges, always an attachment (an upload never runs as a page of
        this origin).  Only from the completed-files area, and only while
        the file is still there: the application may have taken it.
        """
        record = self.find(request, upload_id)
        published = record.published
        if published is None:
            raise Conflict("the upload is not finished")
        path = os.path.abspath(published.path)
        if os.path.dirname(path) != self.config.completeDirectory or not os.path.isfile(path):
            raise dataGone()
        resource = File(path)
        resource.type = safeContentType(record.metadata.get("filetype"))
        resource.encoding = None
        setHeader(request, "Content-Disposition", attachment(record.metadata.get("filename")))
        setHeader(request, "X-Content-Type-Options", "nosniff")
        setHeader(request, "Cache-Control", "no-store")
        return resource


def _static(request: Any, contentType: str) -> None:
    request.setResponseCode(200)
    setHeader(request, "Content-Type", contentType)
    # Revalidated on every load: an upgraded chunkd serves its new script.
    setHeader(request, "Cache-Control", "no-cache")
    setHeader(request, "X-Content-Type-Options", "nosniff")
