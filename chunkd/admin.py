"""
The operator's live view: a small page at C{admin.path} and the JSON API
under C{<admin.path>/api/} that the page polls (and scripts may use).

Who may look (L{AdminAccess}): a loopback peer, or anyone presenting
C{admin.token} -- as a bearer token, or as the cookie the login form sets
(Secure, HttpOnly, SameSite=Strict).  Never anyone else: without a token
configured the view is loopback only.  The peer is the TCP peer, never a
forwarded address, so a forged C{X-Forwarded-For: 127.0.0.1} opens
nothing; and behind a reverse proxy on the same host (C{network.trust_proxy})
every request arrives from loopback, so one that carries C{Forwarded} or
C{X-Forwarded-For} -- it came through the proxy -- is not taken as local.
A loopback request must also name a loopback host (C{Host: 127.0.0.1},
C{localhost}, C{[::1]}), so a web page whose domain was re-pointed at
127.0.0.1 (DNS rebinding) cannot read the API.  Upload tokens never open
the view (its routes are public to the upload authenticator and check
their own token), and the admin token opens no upload.

Actions (expire or delete an upload, retry a webhook delivery now) are
POSTs that a browser on another origin cannot make: an C{Origin} header,
when there is one, must be the view's own, and C{Sec-Fetch-Site}, when
there is one, must say same-origin.

Everything the view reads of the store goes through
L{chunkd.inventory}, in the disk pool; the streaming uploads come from
the in-process registry L{chunkd.live.LiveUploads}.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import time
from importlib import resources
from typing import Any, Dict, List, Sequence
from urllib.parse import parse_qs

from chunkd.config import Config
from chunkd.disk import DiskService
from chunkd.errors import Forbidden, Unauthorized, UploadError
from chunkd.inventory import Inventory
from chunkd.live import LiveUploads
from chunkd.routes import Route
from chunkd.store import EXPIRED, TERMINATED, UploadStore
from chunkd.web import baseURL, header, setHeader

COOKIE = "chunkd_admin"
_DELIVERY = re.compile(r"^[0-9.]+-[0-9a-f]{12}\.json\Z")
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def isLoopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


#: the page's files, read once (not on the reactor per request)
_STATIC = {name: resources.files("chunkd").joinpath("admin_static", name).read_bytes()
           for name in ("admin.html", "admin.js", "login.html")}


class AdminAccess:
    """
    The decision: may this request see the view (L{module docstring}).
    """

    def __init__(self, config: Config) -> None:
        self.token = config.admin.token
        self.trustProxy = config.network.trust_proxy

    def cookieValue(self) -> str:
        """What the login cookie holds: an HMAC of a label under the token
        (no server state; it stops opening the view when the token changes)."""
        return hmac.new(self.token.encode("utf-8"), b"chunkd-admin-session", hashlib.sha256).hexdigest()

    def localRequest(self, request: Any) -> bool:
        if self.trustProxy:
            # Behind a reverse proxy every request comes from loopback, and a
            # proxy that adds no forwarding header would open the view to
            # everyone behind it: only the token opens it then.
            return False
        peer = request.getClientAddress()
        host = getattr(peer, "host", None)
        if host is None or not isLoopback(host):
            return False  # a UNIX socket or a remote peer
        if header(request, "forwarded") or header(request, "x-forwarded-for"):
            return False  # relayed by a proxy on this host
        name = (header(request, "host") or "").lower()
        name = name.rsplit(":", 1)[0] if not name.endswith("]") else name
        return name in _LOOPBACK_HOSTS

    def tokenGiven(self, request: Any) -> bool:
        if not self.token:
            return False
        given = header(request, "authorization") or ""
        if hmac.compare_digest(given.encode("utf-8"), f"Bearer {self.token}".encode("utf-8")):
            return True
        cookie = request.getCookie(COOKIE.encode())
        return cookie is not None and hmac.compare_digest(cookie, self.cookieValue().encode())

    def check(self, request: Any) -> None:
        """
        @raise Unauthorized: from elsewhere, without the token.
        @raise Forbidden: from elsewhere, and no token is configured.
        """
        if self.tokenGiven(request) or self.localRequest(request):
            return
        if not self.token:
            raise Forbidden("the admin view is served to loopback only (set admin.token to open it)")
        raise Unauthorized("the admin view needs its token",
                           headers={"WWW-Authenticate": 'Bearer realm="chunkd-admin"'})

    def checkAction(self, request: Any) -> None:
        """L{check}, and the request must not come from another origin's page."""
        self.check(request)
        origin = header(request, "origin")
        # The view's own origin as its browser sees it (behind a trusted
        # proxy: the forwarded scheme and host).
        expected = "/".join(baseURL(request, self.trustProxy).split("/", 3)[:3])  # scheme://host
        if origin is not None and origin != expected:
            raise Forbidden("admin actions are only taken from the admin view's own origin")
        site = header(request, "sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            raise Forbidden("admin actions are only taken from the admin view's own origin")


class AdminView:
    """
    The view's routes (a protocol-like object for the route table).

    @ivar janitor: the janitor whose last sweep is shown (set by the tap).
    @ivar hooks: the hook sender whose deliveries are shown (set by the tap).
    """

    name = "admin"
    exposedHeaders: List[str] = []

    def __init__(self, config: Config, store: UploadStore, disk: DiskService, live: LiveUploads) -> None:
        self.config = config
        self.store = store
        self.disk = disk
        self.live = live
        self.inventory = Inventory(store, config)
        self.access = AdminAccess(config)
        self.janitor: Any = None
        self.hooks: Any = None
        self.path = config.admin.path

    def reconfigure(self, config: Config) -> None:
        """A new token applies to the next request (the path needs a restart)."""
        self.config = config
        self.access = AdminAccess(config)
        self.inventory = Inventory(self.store, config)

    def routes(self) -> Sequence[Route]:
        p = self.path
        # public: the upload authenticator stays out; every handler checks
        # the admin's own access instead.
        return [
            Route(p, ("GET",), self.redirect, label="other", public=True),
            Route(p + "/", ("GET",), self.page, label="other", public=True),
            Route(p + "/admin.js", ("GET",), self.script, label="other", public=True),
            Route(p + "/login", ("POST",), self.login, label="other", public=True),
            Route(p + "/api/status", ("GET",), self.status, label="other", public=True),
            Route(p + "/api/uploads/<upload_id>/expire", ("POST",), self.expire, label="other", public=True),
            Route(p + "/api/uploads/<upload_id>/delete", ("POST",), self.delete, label="other", public=True),
            Route(p + "/api/hooks/<delivery>/retry", ("POST",), self.retry, label="other", public=True),
        ]

    # -- the page ----------------------------------------------------------------

    def redirect(self, request: Any) -> bytes:
        request.setResponseCode(301)
        setHeader(request, "Location", self.path + "/")
        return b""

    def page(self, request: Any) -> bytes:
        try:
            self.access.check(request)
            name = "admin.html"
        except Unauthorized:
            name = "login.html"  # the token can open it: ask for it
        return self._static(request, name, "text/html; charset=utf-8")

    def script(self, request: Any) -> bytes:
        # The script holds no data; it is served to whoever may see the page.
        self.access.check(request)
        return self._static(request, "admin.js", "text/javascript; charset=utf-8")

    def _static(self, request: Any, name: str, contentType: str) -> bytes:
        setHeader(request, "Content-Type", contentType)
        setHeader(request, "Cache-Control", "no-store")
        setHeader(request, "Content-Security-Policy",
                  "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
                  "form-action 'self'; frame-ancestors 'none'")
        setHeader(request, "X-Content-Type-Options", "nosniff")
        return _STATIC[name]

    async def login(self, request: Any) -> bytes:
        body = await request.bodySink.result()
        given = parse_qs((body or b"").decode("utf-8", "replace")).get("token", [""])[0]
        if not self.access.token or not hmac.compare_digest(given.encode("utf-8"),
                                                             self.access.token.encode("utf-8")):
            raise Unauthorized("wrong admin token")
        request.addCookie(COOKIE, self.access.cookieValue(), path=self.path + "/", secure=True,
                          httpOnly=True, sameSite="strict")
        request.setResponseCode(303)
        setHeader(request, "Location", self.path + "/")
        return b""

    # -- the API -----------------------------------------------------------------

    async def status(self, request: Any) -> bytes:
        """
        Everything the page shows, as one JSON document (README: the admin
        view's JSON API).
        """
        self.access.check(request)
        disk = await self.disk.run(_diskSpace, self.store.directory)
        spooled = await self.disk.run(_spooled, os.path.join(self.store.directory, "hooks"))
        failing = dict(self.hooks.failing) if self.hooks is not None else {}
        deliveries = []
        for entry in spooled:
            state = failing.get(os.path.join(self.store.directory, "hooks", entry["name"]))
            deliveries.append(dict(entry, failing=state))
        report = self.janitor.lastReport if self.janitor is not None else None
        document = {
            "time": time.time(),
            "pid": os.getpid(),
            "inProgress": self.live.snapshot(),
            "recent": {"completed": list(self.live.completed), "expired": list(self.live.expired),
                       "failed": list(self.live.failed)},
            "disk": dict(disk, writeQueue=self.disk.queued, writeQueuePeak=self.disk.peakQueued,
                         jobs=self.disk.outstanding),
            "hooks": {"pending": deliveries},
            "janitor": None if report is None else report.asDict(),
            "janitorAt": getattr(self.janitor, "lastSweepAt", None),
        }
        return _json(request, document)

    async def expire(self, request: Any, upload_id: str) -> bytes:
        return await self._end(request, upload_id, EXPIRED)

    async def delete(self, request: Any, upload_id: str) -> bytes:
        return await self._end(request, upload_id, TERMINATED)

    async def _end(self, request: Any, uploadId: str, state: str) -> bytes:
        self.access.checkAction(request)
        record = await self.disk.run(self.inventory.end, uploadId, state)
        return _json(request, {"id": record.id, "state": record.state})

    def retry(self, request: Any, delivery: str) -> bytes:
        self.access.checkAction(request)
        if not _DELIVERY.match(delivery) or self.hooks is None:
            raise UploadError("no such delivery", status=404)
        if not self.hooks.retryNow(delivery):
            raise UploadError("that delivery is not waiting for a retry in this process", status=409)
        return _json(request, {"delivery": delivery, "retrying": True})


def _json(request: Any, document: Any) -> bytes:
    setHeader(request, "Content-Type", "application/json")
    setHeader(request, "Cache-Control", "no-store")
    return json.dumps(document).encode("utf-8")


def _diskSpace(directory: str) -> Dict[str, int]:
    vfs = os.statvfs(directory)
    return {"free": vfs.f_bavail * vfs.f_frsize, "total": vfs.f_blocks * vfs.f_frsize}


def _spooled(spool: str) -> List[Dict[str, Any]]:
    """The hook deliveries not yet delivered (blocking: the disk pool)."""
    found: List[Dict[str, Any]] = []
    try:
        names = sorted(n for n in os.listdir(spool) if _DELIVERY.match(n))
    except FileNotFoundError:
        return found
    now = time.time()
    for name in names[:200]:
        path = os.path.join(spool, name)
        try:
            with open(path, encoding="utf-8") as f:
                entry = json.load(f)
            upload = json.loads(entry["body"]).get("upload", {})
            age = now - os.stat(path).st_mtime
        except (OSError, ValueError, KeyError, AttributeError):
            continue
        found.append({"name": name, "event": entry.get("event"), "url": entry.get("url"),
                      "uploadId": upload.get("id"), "age": age})
    return found
