"""
Prometheus metrics, from the places where things happen: upload events from
the store, requests and bytes from the Site, queue depth from the disk
writer, free space from the storage directory at scrape time.
"""

from __future__ import annotations

import hmac
import os
from typing import Any, List, Optional, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from chunkd.config import Config
from chunkd.disk import DiskService
from chunkd.errors import Unauthorized
from chunkd.routes import Route
from chunkd.events import POST_CREATE, POST_EXPIRE, POST_FINISH, POST_TERMINATE
from chunkd.store import UploadRecord, UploadStore


class Metrics:
    """
    chunkd's metrics in a registry of their own (not the process-global
    one, so tests and several Sites never collide).
    """

    def __init__(self, config: Config, store: UploadStore, disk: DiskService) -> None:
        self.config = config
        self.store = store
        self.registry = CollectorRegistry()
        r = self.registry
        self.created = Counter("chunkd_uploads_created", "Uploads created", ["protocol"], registry=r)
        self.completed = Counter("chunkd_uploads_completed", "Uploads completed", ["protocol"], registry=r)
        self.expired = Counter("chunkd_uploads_expired", "Uploads expired by the janitor", ["protocol"], registry=r)
        self.terminated = Counter("chunkd_uploads_terminated", "Uploads terminated by clients", ["protocol"], registry=r)
        self.bytes = Counter("chunkd_bytes_received", "Request body bytes received", ["protocol"], registry=r)
        self.requests = Counter("chunkd_requests", "Requests answered", ["protocol", "status"], registry=r)
        self.active = Gauge("chunkd_active_uploads", "Incomplete uploads at the last janitor sweep", registry=r)
        queue = Gauge("chunkd_write_queue_bytes", "Bytes received and not yet written", registry=r)
        queue.set_function(lambda: disk.queued)
        peak = Gauge("chunkd_write_queue_peak_bytes", "Most bytes ever waiting to be written", registry=r)
        peak.set_function(lambda: disk.peakQueued)
        free = Gauge("chunkd_disk_free_bytes", "Free space in the storage directory", registry=r)
        free.set_function(self._freeBytes)
        self._byEvent = {POST_CREATE: self.created, POST_FINISH: self.completed,
                         POST_EXPIRE: self.expired, POST_TERMINATE: self.terminated}
        store.events.subscribe(self.onEvent)

    def _freeBytes(self) -> float:
        st = os.statvfs(self.store.directory)
        return float(st.f_bavail * st.f_frsize)

    def onEvent(self, event: str, record: UploadRecord) -> None:
        counter = self._byEvent.get(event)
        if counter is not None:
            counter.labels(record.protocol).inc()

    @staticmethod
    def protocolOf(request: Any) -> str:
        """
        The protocol a request belongs to: its route's, decided when its
        headers ended (L{chunkd.routes.RouteMatch}).
        """
        route = getattr(request, "route", None)
        return route.protocol if route is not None else "other"

    def requestDone(self, request: Any) -> None:
        self.requests.labels(self.protocolOf(request), str(request.code)).inc()

    def bodyReceived(self, request: Any, size: int) -> None:
        if size:
            self.bytes.labels(self.protocolOf(request)).inc(size)

    def setActive(self, count: Optional[int]) -> None:
        if count is not None:
            self.active.set(count)

    def render(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


class MetricsEndpoint:
    """
    Serves the metrics at C{metrics.path}.
    """

    name = "metrics"
    exposedHeaders: List[str] = []

    def __init__(self, metrics: Metrics, path: str) -> None:
        self.metrics = metrics
        self.path = path

    def routes(self) -> Sequence[Route]:
        # Public to upload tokens: the metrics have their own (metrics.token).
        return [Route(self.path, ("GET",), self.render, label="other", public=True)]

    def render(self, request: Any) -> bytes:
        """
        The metrics, to anyone who can connect -- or, with C{metrics.token},
        only to a scraper presenting it as a bearer token (compared in
        constant time).
        """
        token = self.metrics.config.metrics.token
        if token:
            given = request.getHeader(b"authorization") or b""
            expected = f"Bearer {token}".encode("utf-8")
            if not hmac.compare_digest(given, expected):
                raise Unauthorized("the metrics need their bearer token",
                                   headers={"WWW-Authenticate": 'Bearer realm="chunkd-metrics"'})
        return self.metrics.render(request)

    def reconfigure(self, config: Config) -> None:
        self.metrics.config = config
