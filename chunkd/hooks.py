"""
Webhooks: tell the application about uploads.

Receivers are configured in C{hooks.endpoints}.  Every request is a JSON
POST signed with HMAC-SHA256 of the body under the receiver's secret
(C{Chunkd-Signature: sha256=<hex>}); HTTPS certificates are verified
(treq's agent with service-identity), and every request has a timeout.

C{pre-create} is blocking: the upload is created only if every subscribed
receiver answers 2xx; a receiver may add metadata by answering
C{{"metadata": {...}}}, or refuse with a 4xx status and a message, which the
client then gets.  A receiver that cannot be reached refuses the upload
(503): a policy hook that fails open would not be a policy.

The other events are not blocking.  Each delivery is first written to a
spool file under C{<storage>/hooks/}, then sent, retried with exponential
backoff (capped at C{hooks.max_backoff}) until a receiver answers 2xx, and
only then removed; spooled deliveries are sent again when chunkd starts, so
an event survives a restart as well as an unreachable receiver.

Several processes share one spool (they share the storage directory).  A
process I{claims} a delivery before sending it: an exclusive C{flock} on
the spool file, held through every retry until the file is removed.  So a
delivery is sent by one process at a time, and when that process dies the
kernel (or the shared file system) drops its locks, and another process's
periodic look at the spool (every L{HookSender.rescanInterval} seconds)
takes the delivery over.  Only a process that dies between the receiver's
2xx and removing the file makes a delivery arrive twice: receivers dedupe
on C{Chunkd-Delivery}.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from typing import Any, Dict, List, Optional, Tuple, Union

import fcntl

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from chunkd.config import Config, HookEndpoint
from chunkd.errors import ServiceUnavailable, UploadError
from chunkd.once import OneShotResult
from chunkd.store import COMPLETE, UploadRecord, UploadStore

PRE_CREATE = "pre-create"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def describe(store: UploadStore, record: UploadRecord) -> Dict[str, Any]:
    """
    What a receiver learns of an upload.
    """
    path = record.published.path if record.published is not None else None
    if path is None and record.state == COMPLETE and record.protocol == "tus":
        path = store.dataPath(record.id)
    return {
        "id": record.id,
        "protocol": record.protocol,
        "subject": record.subject,
        "size": record.length,
        "offset": record.offset,
        "state": record.state,
        "metadata": record.metadata,
        "path": path,
        "sha256": record.published.sha256 if record.published is not None else None,
        "created": record.created,
        "updated": record.updated,
    }


def deliveries(config: Config, store: UploadStore, event: str,
               record: UploadRecord) -> List[Tuple[str, Dict[str, Any]]]:
    """
    The spool files (path, content) that announce C{event} of C{record} to
    every receiver that wants it.  Whoever writes them (L{HookSender}, or
    C{chunkctl} acting on the store while chunkd may be stopped), chunkd
    sends them: spooled deliveries are picked up by any running process.
    """
    found = []
    spool = os.path.join(store.directory, "hooks")
    for endpoint in config.hooks.endpoints:
        if event not in endpoint.events:
            continue
        delivery = f"{time.time():.6f}-{secrets.token_hex(6)}"
        body = json.dumps({"event": event, "upload": describe(store, record),
                           "time": time.time()}).encode("utf-8")
        entry = {"url": endpoint.url, "event": event, "delivery": delivery,
                 "body": body.decode("utf-8")}
        found.append((os.path.join(spool, delivery + ".json"), entry))
    return found


def spoolEvent(config: Config, store: UploadStore, event: str, record: UploadRecord) -> int:
    """
    Spool C{event} of C{record} for every receiver that wants it, for a
    process that runs no L{HookSender} (C{chunkctl}): a running chunkd
    sends it within L{HookSender.rescanInterval}, a stopped one when it
    starts.  Blocking.

    @return: how many deliveries were spooled.
    """
    found = deliveries(config, store, event, record)
    if found:
        os.makedirs(os.path.join(store.directory, "hooks"), exist_ok=True)
    for path, entry in found:
        _writeSpool(path, entry)
    return len(found)


class HookSender(Service):
    name = "hooks"
    log = Logger()
    #: seconds between looks at the spool for deliveries nobody holds (a
    #: dead process's): a directory listing, cheap while the spool is empty
    rescanInterval = 1.0

    def __init__(self, config: Config, store: UploadStore, reactor: Any) -> None:
        self.config = config
        self.store = store
        self.reactor = reactor
        self.spool = os.path.join(store.directory, "hooks")
        #: the HTTP client, made at the first delivery (L{_http})
        self._pool: Any = None
        self._client: Any = None
        self._retries: Dict[str, Any] = {}
        self._inflight: "set[Deferred[Any]]" = set()
        #: spool files this process has claimed: path -> the descriptor
        #: holding the flock
        self._claims: Dict[str, int] = {}
        self._rescan = LoopingCall(self.rescan)
        self._spoolTrouble: Optional[str] = None
        # One upload's deliveries go out in order, one at a time, from the
        # process that spooled them: a post-terminate never overtakes its
        # post-create.  path -> fires once the delivery is over here
        # (delivered, dropped, released, or held by another process).
        self._over: Dict[str, OneShotResult[None]] = {}
        self._latest: Dict[str, str] = {}  # upload id -> its latest delivery's path
        self._waiting: "set[str]" = set()  # spooled here, behind an earlier one
        #: deliveries waiting to be retried here: path -> attempt, why the
        #: last one failed, when the next is due (for the admin view)
        self.failing: Dict[str, Dict[str, Any]] = {}

    # -- life cycle ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        os.makedirs(self.spool, exist_ok=True)
        self.store.events.subscribe(self._onEvent)
        self._installPreCreate()
        self._rescan.clock = self.reactor
        self._rescan.start(self.rescanInterval, now=True)

    def rescan(self) -> "Optional[Deferred[None]]":
        """
        Send every spooled delivery no process holds: at start, and then
        now and again to take over those of a process that died.  The
        listing runs in the disk pool: on a shared file system it may hang
        for seconds, and the reactor must not.
        """
        if not self.config.hooks.endpoints and not self._claims:
            return None  # no receivers: nothing is spooled
        d = self.store.disk.run(os.listdir, self.spool)
        # The LoopingCall waits for this: no two looks overlap.
        return d.addCallbacks(self._rescanned, self._spoolUnreadable)

    def _rescanned(self, names: List[str]) -> None:
        if self._spoolTrouble is not None:
            self._spoolTrouble = None
            self.log.info("the hook spool is readable again")
        for name in sorted(names):
            path = os.path.join(self.spool, name)
            if name.endswith(".json") and path not in self._claims and path not in self._waiting:
                self._send(path, attempt=0)

    def _spoolUnreadable(self, failure: Any) -> None:
        # Once per cause, not once a second while a shared file system is
        # unreachable.
        error = failure.getErrorMessage()
        if error != self._spoolTrouble:
            self._spoolTrouble = error
            self.log.error("cannot read the hook spool: {error}", error=error)

    def stopService(self) -> Deferred[Any]:
        """
        Stop retrying (the spool keeps what is undelivered for the next
        start), let deliveries under way finish (each is bounded by
        C{hooks.timeout}), then close the connections.
        """
        super().stopService()
        if self._rescan.running:
            self._rescan.stop()
        for call in self._retries.values():
            if call.active():
                call.cancel()
        self._retries.clear()
        d = DeferredList(list(self._inflight), consumeErrors=True)

        def release(_: Any) -> Any:
            # What is still spooled is another process's to send now.
            released = [self._release(path) for path in list(self._claims)]
            done = DeferredList(released, consumeErrors=True)
            return done.addCallback(lambda _: self._pool and self._pool.closeCachedConnections())

        return d.addCallback(release)

    def _release(self, path: str) -> "Deferred[Any]":
        """Let go of a claimed delivery (closing its descriptor frees the lock)."""
        self._overHere(path)
        fd = self._claims.pop(path, None)
        if fd is None:
            return succeed(None)
        return self.store.disk.run(os.close, fd)

    def _overHere(self, path: str) -> None:
        """This process is done with the delivery: the next of its upload may go."""
        self.failing.pop(path, None)
        over = self._over.pop(path, None)
        if over is not None:
            over.fire(None)

    def _done(self, path: str) -> None:
        """Delivered or dropped: remove the file, then let go of it."""
        self._overHere(path)
        fd = self._claims.pop(path, None)
        d = self.store.disk.run(_removeClaimed, path, fd)
        d.addErrback(lambda f: self.log.failure("removing a hook spool file", f))

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self._installPreCreate()

    def _installPreCreate(self) -> None:
        wanted = any(PRE_CREATE in e.events for e in self.config.hooks.endpoints)
        self.store.events.preCreate = self.preCreate if wanted else None

    def _endpoints(self, event: str) -> List[HookEndpoint]:
        return [e for e in self.config.hooks.endpoints if event in e.events]

    def _post(self, endpoint: HookEndpoint, event: str, body: bytes, delivery: str) -> Deferred[Any]:
        headers: Dict[Union[bytes, str], Union[bytes, str]] = {
            "Content-Type": "application/json",
            "Chunkd-Event": event,
            "Chunkd-Delivery": delivery,
            "User-Agent": "chunkd",
        }
        if endpoint.secret:
            headers["Chunkd-Signature"] = sign(endpoint.secret, body)
        return self._http().post(endpoint.url, data=body, headers=headers,
                                 timeout=self.config.hooks.timeout)

    def _http(self) -> Any:
        """
        The HTTP client, made (and treq and Twisted's web client imported)
        at the first delivery: most chunkd processes never send one, and
        the idle daemon is smaller without them (issue 14).
        """
        if self._client is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool

            self._pool = HTTPConnectionPool(self.reactor, persistent=True)
            self._client = HTTPClient(Agent(self.reactor, pool=self._pool))
        return self._client

    # -- pre-create (blocking) -----------------------------------------------

    @inlineCallbacks
    def preCreate(self, record: UploadRecord) -> Any:
        """
        Ask every pre-create receiver; merge metadata they add; refuse the
        upload with their status and message if one says no.
        """
        for endpoint in self._endpoints(PRE_CREATE):
            body = json.dumps({"event": PRE_CREATE, "upload": describe(self.store, record),
                               "time": time.time()}).encode("utf-8")
            try:
                response = yield self._post(endpoint, PRE_CREATE, body, secrets.token_hex(8))
                content = yield response.content()
            except Exception as e:
                self.log.warn("pre-create hook {url} failed: {error}", url=endpoint.url, error=str(e))
                raise ServiceUnavailable("the upload could not be authorized; try again later") from None
            answer = _json(content)
            if 200 <= response.code < 300:
                added = answer.get("metadata") if isinstance(answer, dict) else None
                if isinstance(added, dict):
                    record.metadata.update({str(k): None if v is None else str(v) for k, v in added.items()})
                continue
            message = answer.get("message") if isinstance(answer, dict) else None
            if not isinstance(message, str):
                message = content.decode("utf-8", "replace").strip().splitlines()[0][:200] if content.strip() else ""
            status = response.code if 400 <= response.code < 500 else 403
            raise UploadError(message or "the upload was refused", status=status)

    # -- post-* events (spooled, retried) -------------------------------------

    def _onEvent(self, event: str, record: UploadRecord) -> None:
        for path, entry in deliveries(self.config, self.store, event, record):
            earlier = self._over.get(self._latest.get(record.id, ""))
            self._latest[record.id] = path
            over = self._over[path] = OneShotResult()
            over.whenFired().addCallback(self._forgetLatest, record.id, path)
            self._waiting.add(path)
            d = self.store.disk.run(_writeSpool, path, entry)
            if earlier is not None:
                d.addCallback(_after, earlier)
            d.addCallbacks(self._start, self._unspooled, callbackArgs=(path,), errbackArgs=(path,))

    def _start(self, _: Any, path: str) -> None:
        self._waiting.discard(path)
        self._send(path, 0)

    def _unspooled(self, failure: Any, path: str) -> None:
        self._waiting.discard(path)
        self._overHere(path)
        self.log.failure("could not spool a hook event", failure)

    def _forgetLatest(self, _: Any, uploadId: str, path: str) -> None:
        if self._latest.get(uploadId) == path:
            del self._latest[uploadId]

    def _send(self, path: str, attempt: int) -> None:
        self._retries.pop(path, None)
        if not self.running:
            self._release(path)  # stopped: another sender may take it
            return
        d = self.store.disk.run(_claimAndRead, path, self._claims.get(path))
        d.addCallback(self._claimed, path, attempt)
        d.addErrback(lambda f: self.log.failure("sending a hook delivery", f))

    def _claimed(self, claim: Optional[Tuple[int, bytes]], path: str, attempt: int) -> None:
        if claim is None:
            self._overHere(path)
            return  # another process is sending it, or it was sent
        fd, content = claim
        self._claims[path] = fd
        if not self.running:
            self._release(path)
            return
        try:
            entry = json.loads(content)
        except ValueError:
            self.log.error("unreadable hook spool file {path}; dropped", path=path)
            self._done(path)
            return
        endpoint = next((e for e in self.config.hooks.endpoints
                         if e.url == entry["url"] and entry["event"] in e.events), None)
        if endpoint is None:
            self.log.info("hook receiver {url} no longer wants {event}; dropped", **entry)
            self._done(path)
            return
        d = self._post(endpoint, entry["event"], entry["body"].encode("utf-8"), entry["delivery"])

        def answered(response: Any) -> Any:
            d2 = response.content()
            d2.addCallback(lambda _: response.code)
            return d2

        def delivered(code: int) -> None:
            if 200 <= code < 300:
                self._done(path)
                return
            self._retry(path, attempt, f"HTTP {code}")

        d.addCallback(answered)
        d.addCallbacks(delivered, lambda f: self._retry(path, attempt, f.getErrorMessage()))
        self._inflight.add(d)

        def settled(result: Any) -> Any:
            self._inflight.discard(d)
            return result

        d.addBoth(settled)

    def _retry(self, path: str, attempt: int, why: str) -> None:
        if not self.running:
            self._release(path)
            return
        delay = min(2.0 ** attempt, self.config.hooks.max_backoff)
        self.log.warn("hook delivery {name} failed ({why}); retry in {delay:.0f}s",
                      name=os.path.basename(path), why=why, delay=delay)
        self._retries[path] = self.reactor.callLater(delay, self._send, path, attempt + 1)
        self.failing[path] = {"attempt": attempt + 1, "error": why, "retryAt": time.time() + delay}

    def retryNow(self, name: str) -> bool:
        """
        Send the spooled delivery C{name} now instead of at its next retry
        (the operator's "retry now").

        @return: whether it was waiting for a retry here (another process
            may hold it, or it is being sent, or it was delivered).
        """
        path = os.path.join(self.spool, name)
        call = self._retries.get(path)
        if os.path.basename(path) != name or call is None or not call.active():
            return False
        call.cancel()
        self._send(path, self.failing.get(path, {}).get("attempt", 1))
        return True


def _after(_: Any, earlier: "OneShotResult[None]") -> "Deferred[None]":
    """A callback: wait for an earlier delivery of the same upload."""
    return earlier.whenFired()


def _claimAndRead(path: str, held: Optional[int]) -> Optional[Tuple[int, bytes]]:
    """
    Take the delivery at C{path} (unless this process holds it already, on
    C{held}) and read it: the descriptor holding an exclusive flock and the
    content, or C{None} if another process holds it or it was delivered
    meanwhile.  Blocking: runs in the disk pool.
    """
    fd = held
    if fd is None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Removed by its sender between our open and our lock: done.
            if os.fstat(fd).st_nlink == 0:
                raise FileNotFoundError(path)
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            return None
    try:
        # Read through the claimed descriptor: closing another one could
        # drop the lock where flock and POSIX locks share a lock space.
        return fd, os.pread(fd, os.fstat(fd).st_size, 0)
    except OSError:
        return fd, b""  # unreadable: the caller drops it


def _removeClaimed(path: str, fd: Optional[int]) -> None:
    """Remove a delivered spool file, then free its lock.  Blocking."""
    try:
        _unlink(path)
    finally:
        if fd is not None:
            os.close(fd)


def _writeSpool(path: str, entry: Dict[str, Any]) -> None:
    temp = path + ".tmp"
    with open(temp, "w", encoding="utf-8") as f:
        json.dump(entry, f)
    os.replace(temp, path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _json(content: bytes) -> Optional[Any]:
    try:
        return json.loads(content) if content.strip() else None
    except ValueError:
        return None
