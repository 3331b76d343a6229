"""
Webhooks against a real HTTP receiver on 127.0.0.1: every event of an
upload's life, signatures, pre-create refusing or adding metadata, retries,
and a delivery that survives a restart through the spool.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any, Dict, List, Tuple

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web import resource, server

from chunkd.hooks import HookSender
from chunkd.janitor import Janitor
from tests.helpers import TusTestCase, deferLater, h

SECRET = "s3cret"


class Receiver(resource.Resource):
    """Records every hook request; answers with the queued replies."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.received: List[Tuple[str, Dict[str, Any], Dict[str, str]]] = []
        self.replies: List[Tuple[int, bytes]] = []

    def render_POST(self, request: Any) -> bytes:
        body = request.content.read()
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.received.append((headers.get("chunkd-event", ""), json.loads(body), headers))
        self.last = body
        code, answer = self.replies.pop(0) if self.replies else (200, b"{}")
        request.setResponseCode(code)
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        headers["signature-valid"] = str(headers.get("chunkd-signature") == expected)
        return answer

    def events(self) -> List[str]:
        return [event for event, _, _ in self.received]


class HookTestCase(TusTestCase):
    events = ["post-create", "post-finish", "post-terminate", "post-expire"]

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.receiver = Receiver()
        site = server.Site(self.receiver)
        self.receiverPort = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(self.receiverPort.stopListening)
        url = f"http://127.0.0.1:{self.receiverPort.getHost().port}/hook"
        self.overrides = {"hooks.endpoints": [{"url": url, "secret": SECRET, "events": self.events}],
                          "hooks.max_backoff": "0.2s", "janitor.expire_after": "1h"}
        yield super().setUp()
        self.hooks = HookSender(self.config, self.store, reactor)
        self.hooks.startService()
        self.addCleanup(self.hooks.stopService)

    @defer.inlineCallbacks
    def waitFor(self, count: int) -> Any:
        for _ in range(100):
            if len(self.receiver.received) >= count:
                return
            yield deferLater(0.05)
        self.fail(f"only {self.receiver.events()} arrived")

    @defer.inlineCallbacks
    def assertSpoolEmptied(self, tries: int) -> Any:
        """
        The spool empties within C{tries} looks 50 ms apart (a spool file
        goes once its 2xx answer is read).
        """
        for _ in range(tries):
            if not os.listdir(self.hooks.spool):
                break
            yield deferLater(0.05)
        self.assertEqual(os.listdir(self.hooks.spool), [])


class LifeCycleTests(HookTestCase):
    @defer.inlineCallbacks
    def test_everyEventOfAnUpload(self) -> Any:
        uploadId = yield self.createId(6, {"Upload-Metadata": "filename YS50eHQ="})
        yield self.patch(uploadId, 0, b"abcdef")
        other = yield self.createId(3)
        r = yield self.client.delete(self.url(f"/files/{other}"), headers={"Tus-Resumable": "1.0.0"})
        yield r.content()
        third = yield self.createId(3)
        self.store.clock = lambda: 9e12
        yield Janitor(self.store, self.config, reactor).sweep()
        yield self.waitFor(6)
        byUpload: Dict[str, List[str]] = {}
        for event, payload, headers in self.receiver.received:
            byUpload.setdefault(payload["upload"]["id"], []).append(event)
            self.assertEqual(headers["signature-valid"], "True")
            self.assertEqual(payload["event"], event)
        self.assertEqual(byUpload[uploadId], ["post-create", "post-finish"])
        self.assertEqual(byUpload[other], ["post-create", "post-terminate"])
        self.assertEqual(byUpload[third], ["post-create", "post-expire"])
        finish = [p for e, p, _ in self.receiver.received if e == "post-finish"][0]["upload"]
        self.assertEqual((finish["size"], finish["protocol"], finish["metadata"]), (6, "tus", {"filename": "a.txt"}))
        self.assertEqual(finish["path"], self.store.dataPath(uploadId))
        yield self.assertSpoolEmptied(40)

    @defer.inlineCallbacks
    def test_failedDeliveriesAreRetried(self) -> Any:
        self.receiver.replies = [(500, b"down"), (503, b"down")]
        yield self.createId(3)
        yield self.waitFor(3)
        self.assertEqual(self.receiver.events(), ["post-create"] * 3)
        yield self.assertSpoolEmptied(20)

    @defer.inlineCallbacks
    def test_spooledDeliverySurvivesARestart(self) -> Any:
        yield self.hooks.stopService()
        portNumber = self.receiverPort.getHost().port
        yield self.receiverPort.stopListening()
        self.hooks.running = True  # spool as a running sender would, with no receiver
        uploadId = yield self.createId(3)
        yield deferLater(0.3)
        self.hooks.running = False
        self.assertEqual(len(os.listdir(self.hooks.spool)), 1)
        self.receiverPort = yield TCP4ServerEndpoint(
            reactor, portNumber, interface="127.0.0.1").listen(server.Site(self.receiver))
        self.addCleanup(self.receiverPort.stopListening)
        restarted = HookSender(self.config, self.store, reactor)
        restarted.startService()
        self.addCleanup(restarted.stopService)
        yield self.waitFor(1)
        self.assertEqual(self.receiver.received[0][1]["upload"]["id"], uploadId)


class PreCreateTests(HookTestCase):
    events = ["pre-create"]

    @defer.inlineCallbacks
    def test_refusal(self) -> Any:
        self.receiver.replies = [(403, json.dumps({"message": "quota exceeded"}).encode())]
        r = yield self.create(10)
        text = yield r.content()
        self.assertEqual(r.code, 403)
        self.assertIn(b"quota exceeded", text)
        self.assertEqual(os.listdir(self.store.uploads), [])
        payload = self.receiver.received[0][1]
        self.assertEqual((payload["event"], payload["upload"]["size"]), ("pre-create", 10))

    @defer.inlineCallbacks
    def test_addsMetadata(self) -> Any:
        self.receiver.replies = [(200, json.dumps({"metadata": {"owner": "alice"}}).encode())]
        uploadId = yield self.createId(10)
        self.assertEqual(self.store.get(uploadId).metadata, {"owner": "alice"})

    @defer.inlineCallbacks
    def test_unreachableReceiverRefusesWith503(self) -> Any:
        yield self.receiverPort.stopListening()
        r = yield self.create(10)
        self.assertEqual(r.code, 503)
        self.assertEqual(os.listdir(self.store.uploads), [])


def selfSignedPem(directory: str) -> str:
    """A self-signed certificate for 127.0.0.1, key and cert in one PEM."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    path = os.path.join(directory, "receiver.pem")
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return path


class CertificateTests(TusTestCase):
    """
    An HTTPS receiver whose certificate no authority vouches for is never
    trusted: the pre-create hook cannot be asked, so the upload is refused.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        import tempfile

        from twisted.internet.endpoints import serverFromString

        self.receiver = Receiver()
        pem = selfSignedPem(tempfile.mkdtemp())
        endpoint = serverFromString(reactor, f"ssl:0:interface=127.0.0.1:privateKey={pem}:certKey={pem}")
        self.receiverPort = yield endpoint.listen(server.Site(self.receiver))
        self.addCleanup(self.receiverPort.stopListening)
        url = f"https://127.0.0.1:{self.receiverPort.getHost().port}/hook"
        self.overrides = {"hooks.endpoints": [{"url": url, "secret": SECRET, "events": ["pre-create"]}]}
        yield super().setUp()
        self.hooks = HookSender(self.config, self.store, reactor)
        self.hooks.startService()
        self.addCleanup(self.hooks.stopService)

    @defer.inlineCallbacks
    def test_unverifiableCertificateIsRefused(self) -> Any:
        r = yield self.create(10)
        self.assertEqual(r.code, 503)
        self.assertEqual(self.receiver.received, [])


class OtherProtocolsTests(HookTestCase):
    """
    The receiver hears every protocol's uploads through the same events.
    """

    def byUpload(self) -> Dict[str, List[Tuple[str, Dict[str, Any]]]]:
        result: Dict[str, List[Tuple[str, Dict[str, Any]]]] = {}
        for event, payload, headers in self.receiver.received:
            self.assertEqual(headers["signature-valid"], "True")
            result.setdefault(payload["upload"]["id"], []).append((event, payload["upload"]))
        return result

    @defer.inlineCallbacks
    def test_resumableUpload(self) -> Any:
        query = ("resumableChunkNumber=1&resumableChunkSize=1048576&resumableCurrentChunkSize=5"
                 "&resumableTotalSize=5&resumableType=text%2Fplain&resumableIdentifier=5-a-txt"
                 "&resumableFilename=a.txt&resumableRelativePath=a.txt&resumableTotalChunks=1")
        r = yield self.client.post(self.url(f"/resumable?{query}"), data=b"hello",
                                   headers={"Content-Type": "application/octet-stream"})
        answer = json.loads((yield r.content()))
        self.assertEqual(r.code, 200)
        yield self.waitFor(2)
        events = self.byUpload()[answer["uploadId"]]
        self.assertEqual([e for e, _ in events], ["post-create", "post-finish"])
        finished = events[1][1]
        self.assertEqual((finished["protocol"], finished["size"], finished["sha256"]),
                         ("resumable", 5, hashlib.sha256(b"hello").hexdigest()))
        with open(finished["path"], "rb") as f:
            self.assertEqual(f.read(), b"hello")

    @defer.inlineCallbacks
    def test_facadeUploadFinishesAtFinalize(self) -> Any:
        r = yield self.client.post(self.url("/uploads"), headers={"Upload-Length": "5", "Tus-Resumable": "1.0.0"})
        yield r.content()
        uploadId = h(r, "location").rsplit("/", 1)[1]
        token = h(r, "upload-token")
        r = yield self.client.patch(self.url(f"/uploads/{uploadId}"), data=b"hello", headers={
            "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream", "Tus-Resumable": "1.0.0"})
        yield r.content()
        yield self.waitFor(1)
        yield deferLater(0.1)
        self.assertEqual([e for e, _ in self.byUpload()[uploadId]], ["post-create"])
        r = yield self.client.post(self.url("/uploads/finalize"), data=json.dumps(
            {"uploadId": uploadId, "filename": "clip.mp4", "uploadToken": token}).encode(),
            headers={"Content-Type": "application/json"})
        yield r.content()
        self.assertEqual(r.code, 200)
        yield self.waitFor(2)
        events = self.byUpload()[uploadId]
        self.assertEqual([e for e, _ in events], ["post-create", "post-finish"])
        finished = events[1][1]
        self.assertEqual((finished["protocol"], finished["sha256"], os.path.basename(finished["path"])),
                         ("facade", hashlib.sha256(b"hello").hexdigest(), "clip.mp4"))


class HoldingReceiver(Receiver):
    """A receiver that keeps its answers back until told (a slow one)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: List[Any] = []
        self.holding = True

    def render_POST(self, request: Any) -> Any:
        answer = super().render_POST(request)
        if not self.holding:
            return answer
        self.held.append((request, answer))
        return server.NOT_DONE_YET

    def release(self) -> None:
        self.holding = False
        held, self.held = self.held, []
        for request, answer in held:
            request.write(answer)
            request.finish()


class HoldingHookTestCase(HookTestCase):
    """Hook tests whose receiver holds its answers until released."""

    events = ["post-create"]

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.holding = HoldingReceiver()
        self.holding.replies = self.receiver.replies
        self.receiver = self.holding
        port = self.receiverPort.getHost().port
        yield self.receiverPort.stopListening()
        self.receiverPort = yield TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(
            server.Site(self.holding))
        self.addCleanup(self.receiverPort.stopListening)

    def deliveries(self) -> List[str]:
        return [headers["chunkd-delivery"] for _, _, headers in self.receiver.received]


class SharedSpoolTests(HoldingHookTestCase):
    """
    Several processes share one spool.  Seen with three processes (issue
    11): one that (re)started sent every spooled delivery, including those
    another live process was still sending -- the same Chunkd-Delivery
    arrived twice, every run.  A second HookSender on the same storage is
    such a process (flock excludes open files, not only processes).
    """

    events = ["post-create"]

    @defer.inlineCallbacks
    def test_aDeliveryInFlightIsNotSentByAnotherProcess(self) -> Any:
        yield self.createId(3)
        yield self.waitFor(1)  # in flight, held by the receiver
        other = HookSender(self.config, self.store, reactor)
        other.startService()
        self.addCleanup(other.stopService)
        yield deferLater(1.5)  # its start and a rescan (every second)
        self.holding.release()
        yield self.assertSpoolEmptied(40)
        self.assertEqual(len(self.deliveries()), 1, self.deliveries())

    @defer.inlineCallbacks
    def test_aDeadSendersDeliveriesAreTakenOver(self) -> Any:
        self.holding.holding = False
        self.receiver.replies.extend([(500, b"down")] * 3)
        yield self.createId(3)
        yield self.waitFor(1)
        # The sending process dies: the kernel drops its locks, its timers
        # never fire.
        for call in self.hooks._retries.values():
            call.cancel()
        for fd in self.hooks._claims.values():
            os.close(fd)
        self.hooks._claims.clear()
        self.hooks.running = False
        self.hooks._rescan.stop()
        other = HookSender(self.config, self.store, reactor)
        other.startService()
        self.addCleanup(other.stopService)
        yield self.assertSpoolEmptied(80)
        codes = len(self.receiver.received)
        self.assertEqual(len(set(self.deliveries())), 1)  # one delivery, retried until a 2xx
        self.assertLessEqual(codes, 4)


class UnreadableSpoolTests(HookTestCase):
    """
    A spool that cannot be read (a shared file system cut off) is logged
    once per cause, not on every look, and its recovery once.
    """

    events = ["post-create"]

    @defer.inlineCallbacks
    def test_loggedOncePerCause(self) -> Any:
        from twisted.logger import globalLogPublisher

        seen: List[str] = []

        def observe(event: Dict[str, Any]) -> None:
            if event.get("log_namespace", "").startswith("chunkd.hooks"):
                seen.append(event.get("log_format", ""))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        away = self.hooks.spool + ".away"
        os.rename(self.hooks.spool, away)
        for _ in range(3):
            yield self.hooks.rescan()
        os.rename(away, self.hooks.spool)
        yield self.hooks.rescan()
        yield self.hooks.rescan()
        self.assertEqual(seen, ["cannot read the hook spool: {error}", "the hook spool is readable again"])


class OrderTests(HoldingHookTestCase):
    """
    One upload's deliveries go out in order, one at a time: a post-terminate
    never overtakes the post-create still being delivered (seen once in
    CI: the receiver heard of the termination first).
    """

    events = ["post-create", "post-terminate"]

    @defer.inlineCallbacks
    def test_aLaterEventWaitsForTheEarlierDelivery(self) -> Any:
        uploadId = yield self.createId(3)
        yield self.waitFor(1)  # post-create in flight, held
        r = yield self.client.delete(self.url(f"/files/{uploadId}"), headers={"Tus-Resumable": "1.0.0"})
        self.assertEqual(r.code, 204)
        yield deferLater(0.5)
        self.assertEqual(self.receiver.events(), ["post-create"])
        self.holding.release()
        yield self.waitFor(2)
        self.assertEqual(self.receiver.events(), ["post-create", "post-terminate"])
        yield self.assertSpoolEmptied(40)
