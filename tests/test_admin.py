"""
The operator's live view over real sockets: its JSON API while a tus body
streams and after it completed, its actions, and who may see it.

Non-loopback peers are real: the server also listens on this machine's
non-loopback interface address (from C{ip -4 addr}) and the client
connects to that address, so the server sees a peer that is not loopback.
Without such an address those tests are skipped, saying why.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Dict, Optional

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint

from chunkd.admin import AdminAccess, isLoopback
from tests.helpers import RawConnection, TusTestCase, deferLater, finalResponse, patchHead


def nonLoopbackAddress() -> Optional[str]:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    try:
        out = subprocess.run(["ip", "-o", "-4", "addr", "show", "scope", "global"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            address = parts[parts.index("inet") + 1].split("/")[0]
            if not isLoopback(address):
                return address
    return None


class AdminTestCase(TusTestCase):
    @defer.inlineCallbacks
    def get(self, path: str, base: Optional[str] = None, headers: Optional[Dict[str, str]] = None) -> Any:
        response = yield self.client.get((base or self.base) + path, headers=headers or {})
        response.body = yield response.content()
        return response

    @defer.inlineCallbacks
    def post(self, path: str, base: Optional[str] = None, headers: Optional[Dict[str, str]] = None,
             data: bytes = b"") -> Any:
        response = yield self.client.post((base or self.base) + path, headers=headers or {}, data=data)
        response.body = yield response.content()
        return response

    @defer.inlineCallbacks
    def status(self) -> Any:
        response = yield self.get("/_admin/api/status")
        self.assertEqual(response.code, 200, response.body)
        return json.loads(response.body)


class LiveViewTests(AdminTestCase):
    @defer.inlineCallbacks
    def test_anUploadInProgressThenComplete(self) -> Any:
        data = os.urandom(2 * 1024 * 1024)
        uploadId = yield self.createId(len(data))
        connection = yield RawConnection.open(self.port.getHost().port)
        self.addCleanup(connection.close)
        connection.write(patchHead(uploadId, 0, len(data)) + data[:1024 * 1024])
        for _ in range(200):
            status = yield self.status()
            streaming = [u for u in status["inProgress"] if u["id"] == uploadId]
            if streaming and streaming[0]["received"] == 1024 * 1024:
                break
            yield deferLater(0.02)
        else:
            self.fail(f"the upload never showed 1 MiB in progress: {status}")
        entry = streaming[0]
        self.assertEqual((entry["protocol"], entry["client"], entry["size"], entry["offset"]),
                         ("tus", "127.0.0.1", len(data), 1024 * 1024))
        self.assertGreater(entry["rate"], 0)
        self.assertGreaterEqual(entry["age"], 0)
        self.assertIsNone(entry["subject"])
        self.assertGreater(status["disk"]["free"], 0)
        self.assertIn("writeQueue", status["disk"])
        self.assertEqual(status["hooks"], {"pending": []})

        connection.write(data[1024 * 1024:])
        yield connection.waitFor(finalResponse)
        status = yield self.status()
        self.assertEqual(status["inProgress"], [])
        self.assertEqual([u["id"] for u in status["recent"]["completed"]], [uploadId])
        self.assertEqual(self.dataOf(uploadId), data)

    @defer.inlineCallbacks
    def test_aBodyCutOffIsShownFailed(self) -> Any:
        uploadId = yield self.createId(1000)
        connection = yield RawConnection.open(self.port.getHost().port)
        connection.write(patchHead(uploadId, 0, 1000) + b"x" * 100)
        yield deferLater(0.2)
        connection.close()
        for _ in range(100):
            status = yield self.status()
            if status["recent"]["failed"]:
                break
            yield deferLater(0.02)
        failed = status["recent"]["failed"][0]
        self.assertEqual((failed["id"], failed["client"], failed["received"]), (uploadId, "127.0.0.1", 100))
        self.assertIn("cut off", failed["error"])

    @defer.inlineCallbacks
    def test_expireAndDeleteAreSameOriginPosts(self) -> Any:
        first = yield self.createId(10)
        second = yield self.createId(10)
        response = yield self.post(f"/_admin/api/uploads/{first}/expire",
                                   headers={"Origin": "http://evil.example"})
        self.assertEqual(response.code, 403)
        response = yield self.post(f"/_admin/api/uploads/{first}/expire",
                                   headers={"Sec-Fetch-Site": "cross-site"})
        self.assertEqual(response.code, 403)
        self.assertEqual(self.store.get(first).state, "active")
        response = yield self.post(f"/_admin/api/uploads/{first}/expire", headers={"Origin": self.base})
        self.assertEqual((response.code, json.loads(response.body)), (200, {"id": first, "state": "expired"}))
        r = yield self.head(first)
        self.assertEqual(r.code, 410)
        response = yield self.post(f"/_admin/api/uploads/{second}/delete")
        self.assertEqual(json.loads(response.body)["state"], "terminated")
        response = yield self.post(f"/_admin/api/uploads/{second}/delete")
        self.assertEqual(response.code, 410)
        response = yield self.post("/_admin/api/uploads/not-an-id/delete")
        self.assertEqual(response.code, 404)
        status = yield self.status()
        self.assertEqual({(u["id"], u["how"]) for u in status["recent"]["expired"]},
                         {(first, "expired"), (second, "terminated")})

    @defer.inlineCallbacks
    def test_aStreamingUploadIsNotDeleted(self) -> Any:
        uploadId = yield self.createId(1000)
        connection = yield RawConnection.open(self.port.getHost().port)
        self.addCleanup(connection.close)
        connection.write(patchHead(uploadId, 0, 1000) + b"x" * 100)
        yield deferLater(0.2)
        response = yield self.post(f"/_admin/api/uploads/{uploadId}/delete")
        self.assertEqual(response.code, 423)
        connection.write(b"x" * 900)
        yield connection.waitFor(finalResponse)
        self.assertEqual(self.dataOf(uploadId), b"x" * 1000)

    @defer.inlineCallbacks
    def test_thePageAndItsScriptComeFromThePackage(self) -> Any:
        redirect = yield self.client.get(self.url("/_admin"), allow_redirects=False)
        yield redirect.content()
        self.assertEqual((redirect.code, redirect.headers.getRawHeaders("location")), (301, ["/_admin/"]))
        page = yield self.get("/_admin/")
        self.assertEqual(page.code, 200)
        self.assertIn(b'<script src="admin.js">', page.body)
        self.assertNotIn(b"http", page.body.replace(b"https://", b"").split(b"<body>")[0])
        script = yield self.get("/_admin/admin.js")
        self.assertIn(b'fetch("api/status"', script.body)
        self.assertIn("script-src 'self'", page.headers.getRawHeaders("content-security-policy")[0])

    @defer.inlineCallbacks
    def test_aRebindingHostIsRefused(self) -> Any:
        """A loopback peer naming a foreign host: a page whose DNS points at us."""
        response = yield self.get("/_admin/api/status", headers={"Host": "attacker.example"})
        self.assertEqual(response.code, 403)


class ProxyTests(AdminTestCase):
    overrides = {"network.trust_proxy": True}

    @defer.inlineCallbacks
    def test_behindAProxyOnlyTheTokenOpensIt(self) -> Any:
        """
        Under trust_proxy every request comes from loopback (the proxy's),
        forwarded headers or not -- a proxy that adds none would otherwise
        open the view to everyone behind it: no loopback trust at all.
        """
        for headers in ({"X-Forwarded-For": "127.0.0.1"}, {"Forwarded": "for=127.0.0.1"}, {}):
            response = yield self.get("/_admin/api/status", headers=headers)
            self.assertEqual(response.code, 403, headers)


class TokenBehindAProxyTests(AdminTestCase):
    overrides = {"network.trust_proxy": True, "admin.token": "t" * 20}

    @defer.inlineCallbacks
    def test_actionsThroughATLSProxy(self) -> Any:
        """
        Through a TLS-terminating proxy the view's origin is the forwarded
        one: an action from that origin is taken, one from another is not.
        """
        uploadId = yield self.createId(10)
        proxied = {"Authorization": "Bearer " + "t" * 20, "X-Forwarded-Proto": "https",
                   "X-Forwarded-Host": "chunkd.example.com", "X-Forwarded-For": "203.0.113.9"}
        response = yield self.post(f"/_admin/api/uploads/{uploadId}/expire",
                                   headers=dict(proxied, Origin="https://evil.example"))
        self.assertEqual(response.code, 403)
        response = yield self.post(f"/_admin/api/uploads/{uploadId}/expire",
                                   headers=dict(proxied, Origin="https://chunkd.example.com",
                                                **{"Sec-Fetch-Site": "same-origin"}))
        self.assertEqual(response.code, 200, response.body)


class RemoteTestCase(AdminTestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        address = nonLoopbackAddress()
        if address is None:
            raise self.skipTest("this machine has no non-loopback IPv4 address to connect from")
        port = yield TCP4ServerEndpoint(reactor, 0, interface=address).listen(self.site)
        self.addCleanup(port.stopListening)
        self.remote = f"http://{address}:{port.getHost().port}"


class RemoteWithoutTokenTests(RemoteTestCase):
    @defer.inlineCallbacks
    def test_refusedFromElsewhere(self) -> Any:
        for path in ("/_admin/api/status", "/_admin/", "/_admin/admin.js"):
            response = yield self.get(path, base=self.remote)
            self.assertEqual(response.code, 403, path)
            self.assertIn(b"loopback only", response.body)
        # A forged forwarded address opens nothing: the peer decides.
        response = yield self.get("/_admin/api/status", base=self.remote,
                                  headers={"X-Forwarded-For": "127.0.0.1"})
        self.assertEqual(response.code, 403)
        uploadId = yield self.createId(10)
        response = yield self.post(f"/_admin/api/uploads/{uploadId}/delete", base=self.remote)
        self.assertEqual(response.code, 403)
        self.assertEqual(self.store.get(uploadId).state, "active")


TOKEN = "admin-token-0123456789abcdef"


class RemoteWithTokenTests(RemoteTestCase):
    overrides = {"admin.token": TOKEN, "auth.required": True, "auth.tokens": {"upload-token-abc": "alice"}}

    @defer.inlineCallbacks
    def test_theTokenOpensItAsBearerOrCookie(self) -> Any:
        response = yield self.get("/_admin/api/status", base=self.remote)
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders("www-authenticate"), ['Bearer realm="chunkd-admin"'])
        for wrong in ("Bearer nope", "Bearer upload-token-abc", f"Basic {TOKEN}"):
            response = yield self.get("/_admin/api/status", base=self.remote, headers={"Authorization": wrong})
            self.assertEqual(response.code, 401, wrong)
        response = yield self.get("/_admin/api/status", base=self.remote,
                                  headers={"Authorization": f"Bearer {TOKEN}"})
        self.assertEqual(response.code, 200)
        self.assertIn("inProgress", json.loads(response.body))

        page = yield self.get("/_admin/", base=self.remote)
        self.assertIn(b'name="token"', page.body)  # the login form, no data
        wrong = yield self.post("/_admin/login", base=self.remote, data=b"token=nope",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(wrong.code, 401)
        self.assertIsNone(wrong.headers.getRawHeaders("set-cookie"))
        login = yield self.client.post(self.remote + "/_admin/login", data=f"token={TOKEN}".encode(),
                                       headers={"Content-Type": "application/x-www-form-urlencoded"},
                                       allow_redirects=False)
        yield login.content()
        self.assertEqual(login.code, 303)
        cookie = login.headers.getRawHeaders("set-cookie")[0]
        for attribute in ("Secure", "HttpOnly", "SameSite=strict", "Path=/_admin/"):
            self.assertIn(attribute.lower(), cookie.lower())
        value = cookie.split(";", 1)[0]
        response = yield self.get("/_admin/api/status", base=self.remote, headers={"Cookie": value})
        self.assertEqual(response.code, 200)
        page = yield self.get("/_admin/", base=self.remote, headers={"Cookie": value})
        self.assertIn(b'<script src="admin.js">', page.body)
        # An action with the cookie must come from the view's own origin.
        uploadId = yield self.createId(10, headers={"Authorization": "Bearer upload-token-abc"})
        response = yield self.post(f"/_admin/api/uploads/{uploadId}/expire", base=self.remote,
                                   headers={"Cookie": value, "Origin": "https://evil.example"})
        self.assertEqual(response.code, 403)
        response = yield self.post(f"/_admin/api/uploads/{uploadId}/expire", base=self.remote,
                                   headers={"Cookie": value, "Origin": self.remote})
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_theAdminTokenOpensNoUpload(self) -> Any:
        response = yield self.create(10, headers={"Authorization": f"Bearer {TOKEN}"})
        self.assertEqual(response.code, 401)
        # And the loopback view needs no upload token under auth.required.
        status = yield self.status()
        self.assertEqual(status["inProgress"], [])


class AccessDecisionTests(AdminTestCase):
    def test_cookieFollowsTheToken(self) -> None:
        """The login cookie is derived from the token: a new token voids it."""
        from chunkd.config import loadConfig

        one = AdminAccess(loadConfig(None, {"admin.token": TOKEN}))
        two = AdminAccess(loadConfig(None, {"admin.token": TOKEN + "x"}))
        self.assertNotEqual(one.cookieValue(), two.cookieValue())
        self.assertTrue(isLoopback("::1") and isLoopback("127.8.9.10"))
        self.assertFalse(isLoopback("192.0.2.1") or isLoopback("localhost"))


class _Receiver:
    """A webhook receiver on a real socket: answers 500 until told to accept."""

    def __init__(self) -> None:
        self.accepting = False
        self.received = 0

    def render(self, request: Any) -> bytes:
        self.received += 1
        request.setResponseCode(200 if self.accepting else 500)
        return b""


class HookRetryTests(AdminTestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        self.receiver = _Receiver()
        resource = Resource()
        resource.isLeaf = True
        resource.render = self.receiver.render  # type: ignore[method-assign]
        listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(resource))
        self.addCleanup(listening.stopListening)
        self.overrides = {"hooks.endpoints": [{"url": f"http://127.0.0.1:{listening.getHost().port}/h",
                                               "events": ["post-create"]}], "hooks.max_backoff": "1h"}
        yield super().setUp()

    @defer.inlineCallbacks
    def test_aFailingDeliveryIsShownAndRetriedNow(self) -> Any:
        from chunkd.hooks import HookSender

        hooks = HookSender(self.config, self.store, reactor)
        hooks.startService()
        self.addCleanup(hooks.stopService)
        self.site.routes.protocols["admin"].hooks = hooks
        uploadId = yield self.createId(10)
        for _ in range(200):
            status = yield self.status()
            pending = status["hooks"]["pending"]
            if pending and pending[0]["failing"]:
                break
            yield deferLater(0.02)
        else:
            self.fail(f"no failing delivery shown: {status}")
        delivery = pending[0]
        self.assertEqual((delivery["event"], delivery["uploadId"]), ("post-create", uploadId))
        self.assertEqual((delivery["failing"]["attempt"], delivery["failing"]["error"]), (1, "HTTP 500"))
        self.receiver.accepting = True
        response = yield self.post(f"/_admin/api/hooks/{delivery['name']}/retry")
        self.assertEqual(response.code, 200, response.body)
        for _ in range(200):
            status = yield self.status()
            if not status["hooks"]["pending"]:
                break
            yield deferLater(0.02)
        self.assertEqual(status["hooks"]["pending"], [])  # delivered now, not in a second
        self.assertEqual(self.receiver.received, 2)
        response = yield self.post(f"/_admin/api/hooks/{delivery['name']}/retry")
        self.assertEqual(response.code, 409)
