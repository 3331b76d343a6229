"""
The bodies streaming into uploads right now, for the operator's live view
(L{chunkd.admin}), and the last uploads that finished, expired or failed
in this process.

Cheap by construction: a body is registered once when its sink is made
and dropped once when it ends; nothing is done per chunk (the byte count
is the sink's own counter, read only when someone looks), and the rate is
worked out at look time.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable, Deque, Dict, List, Optional

from chunkd.events import POST_EXPIRE, POST_FINISH, POST_TERMINATE
from chunkd.store import UploadRecord

#: how many finished, expired and failed uploads are remembered, of each
RECENT = 20


class Streaming:
    """
    One body streaming into an upload.

    @ivar counter: what counts its bytes (a sink with C{received}).
    @ivar request: the request, asked for its client only when looked at.
    """

    __slots__ = ("record", "start", "started", "counter", "request")

    def __init__(self, record: UploadRecord, start: int, counter: Any, request: Any,
                 now: float) -> None:
        self.record = record
        self.start = start
        self.started = now
        self.counter = counter
        self.request = request


class LiveUploads:
    """
    The registry: fed by the upload layer, read by the admin view.

    @param clientOf: the client address of a request (the forwarded one
        behind a trusted proxy).
    """

    def __init__(self, clientOf: Callable[[Any], str], clock: Callable[[], float] = time.time) -> None:
        self.clientOf = clientOf
        self.clock = clock
        self._streaming: Dict[int, Streaming] = {}
        self.completed: Deque[Dict[str, Any]] = collections.deque(maxlen=RECENT)
        self.expired: Deque[Dict[str, Any]] = collections.deque(maxlen=RECENT)
        self.failed: Deque[Dict[str, Any]] = collections.deque(maxlen=RECENT)

    def started(self, record: UploadRecord, start: int, counter: Any, request: Any) -> Streaming:
        entry = Streaming(record, start, counter, request, self.clock())
        self._streaming[id(entry)] = entry
        return entry

    def ended(self, entry: Streaming, error: Optional[str]) -> None:
        """The body is over; C{error} says why it failed, if it did."""
        self._streaming.pop(id(entry), None)
        if error is not None:
            self.failed.appendleft(dict(self._describe(entry, self.clock()), error=error))

    def onEvent(self, event: str, record: UploadRecord) -> None:
        """A store event listener: remembers the last finished and ended uploads."""
        now = self.clock()
        brief = {"id": record.id, "protocol": record.protocol, "size": record.length,
                 "subject": record.subject, "at": now}
        if event == POST_FINISH:
            if record.published is not None:
                brief.update(name=record.published.name, sha256=record.published.sha256)
            self.completed.appendleft(brief)
        elif event in (POST_EXPIRE, POST_TERMINATE):
            self.expired.appendleft(dict(brief, how=record.state))

    def _describe(self, entry: Streaming, now: float) -> Dict[str, Any]:
        received = entry.counter.received
        record = entry.record
        try:
            client = self.clientOf(entry.request)
        except Exception:
            client = "-"
        return {"id": record.id, "protocol": record.protocol, "client": client,
                "size": record.length, "offset": entry.start + received, "received": received,
                "age": now - record.created, "streaming": now - entry.started,
                "rate": received / max(now - entry.started, 0.001), "subject": record.subject}

    def snapshot(self) -> List[Dict[str, Any]]:
        """
        Every body streaming now, longest first, with its average rate
        (bytes per second since the body began).
        """
        now = self.clock()
        found = [self._describe(entry, now) for entry in list(self._streaming.values())]
        found.sort(key=lambda d: -d["streaming"])
        return found
