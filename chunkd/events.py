"""
Upload life-cycle events, raised by the store where the transitions really
happen (created, finished, terminated, expired), so every protocol gets
hooks and metrics without knowing about them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

if TYPE_CHECKING:
    from chunkd.store import UploadRecord

POST_CREATE = "post-create"
POST_FINISH = "post-finish"
POST_TERMINATE = "post-terminate"
POST_EXPIRE = "post-expire"

Listener = Callable[[str, "UploadRecord"], None]
PreCreate = Callable[["UploadRecord"], "Deferred[Any]"]


class UploadEvents:
    """
    A small synchronous event hub.  Listeners run on the reactor thread;
    one failing listener is logged and does not stop the others.

    @ivar preCreate: if set, called with a new record before anything is
        written; it may add metadata to the record, or fail with an
        L{chunkd.errors.UploadError} to refuse the upload.
    """

    log = Logger()

    def __init__(self) -> None:
        self._listeners: List[Listener] = []
        self.preCreate: Optional[PreCreate] = None

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, event: str, record: "UploadRecord") -> None:
        for listener in list(self._listeners):
            try:
                listener(event, record)
            except Exception:
                self.log.failure("event listener failed for {event} of {uploadId}",
                                 event=event, uploadId=record.id)
