"""
One chunkd, built from a config: the store's companions (running hashes,
publisher, upload layer), the protocols, the route table, the metrics, the
upload page and the Site -- what a test serves on port 0, and what the tap wraps in
services.
"""

from __future__ import annotations

from typing import List, Optional

from twisted.logger import Logger

from chunkd.admin import AdminView
from chunkd.auth import Authenticator
from chunkd.config import Config
from chunkd.disk import DiskService
from chunkd.guard import Guard
from chunkd.live import LiveUploads
from chunkd.metrics import Metrics, MetricsEndpoint
from chunkd.page import UploadPage
from chunkd.protocols.facade import FacadeProtocol
from chunkd.protocols.ietf import IetfProtocol
from chunkd.protocols.resumable import chunkProtocols
from chunkd.protocols.tus import TusProtocol
from chunkd.publish import Publisher
from chunkd.routes import UploadProtocol
from chunkd.store import UploadRecord, UploadStore
from chunkd.uploads import UploadService
from chunkd.web import ChunkdSite, Cors, buildRoutes, clientAddress
from chunkd.writeback import startWriteback


def buildProtocols(config: Config, uploads: UploadService) -> List[UploadProtocol]:
    """
    The enabled protocols, each at its configured path.
    """
    protocols: List[UploadProtocol] = []
    if config.tus.enabled:
        protocols.append(TusProtocol(config, uploads))
    if config.ietf.enabled:
        protocols.append(IetfProtocol(config, uploads))
    if config.uploads.enabled:
        protocols.append(FacadeProtocol(config, uploads))
    # Resumable.js at resumable.path and flow.js at flow.path, each if enabled.
    protocols.extend(chunkProtocols(config, uploads))
    return protocols


class Chunkd:
    """
    One chunkd over one store.
    """

    def __init__(self, config: Config, store: UploadStore, disk: DiskService) -> None:
        self.config = config
        self.store = store
        self.disk = disk
        self.publisher = Publisher(store, disk, config.completeDirectory)
        self.uploads = UploadService(config, store, disk, self.publisher)
        self.protocols = buildProtocols(config, self.uploads)
        self.metrics: Optional[Metrics] = None
        installed: List[UploadProtocol] = list(self.protocols)
        # The bodies streaming now and the last uploads to end, for the
        # operator's live view.
        self.live = LiveUploads(lambda request: clientAddress(request, self.config.network.trust_proxy))
        self.uploads.live = self.live
        store.events.subscribe(self.live.onEvent)
        self.admin: Optional[AdminView] = None
        if config.admin.enabled:
            self.admin = AdminView(config, store, disk, self.live)
            installed.append(self.admin)
        if config.metrics.enabled:
            self.metrics = Metrics(config, store, disk)
            installed.append(MetricsEndpoint(self.metrics, config.metrics.path))
        if config.ui.enabled:
            # The page at ui.path; its routes stand beside the protocols'
            # (GET only: the CORS preflight route at / keeps OPTIONS).
            installed.append(UploadPage(config, self.uploads))
        self.routes, self.exposed = buildRoutes(installed, Authenticator(config))
        if config.ietf.enabled and config.tus.enabled:
            # A tus client never names an interop version; an IETF draft
            # client always does: one mount serves both.
            self.routes.divert(config.tus.path, "Upload-Draft-Interop-Version", config.ietf.path)
        self.installed = installed
        self.site = ChunkdSite(self.routes, Cors(config, self.exposed), config.network.idle_timeout,
                               self.metrics)
        # Every connection is a GuardedChannel: limits, slow clients.
        self.guard = Guard(config.network, disk.reactor)
        self.site.protocol = self.guard.channel  # type: ignore[assignment]
        self._applyTuning(config)
        store.events.subscribe(logUploadEvent)

    def _applyTuning(self, config: Config) -> None:
        self.disk.minBatch = config.disk.min_batch
        self.disk.maxBuffered = config.disk.max_buffered
        # Durable storage waits for the disk at every fdatasync: let the
        # disk start on each batch at once (chunkd/writeback.py).
        self.disk.startWriteback = startWriteback if config.storage.durable else None
        self.site.readSize = config.disk.read_size
        self.site.streamingBodies = self.disk.streamingBodies
        self.site.logEveryRequest = config.log_level == "debug"

    def reconfigure(self, config: Config) -> None:
        """
        Take a reloaded config: the upload layer and the protocols read it
        per request, CORS, the idle timeout and the guard's limits apply to
        new requests and connections.
        """
        self.config = config
        self.uploads.reconfigure(config)
        for protocol in self.installed:
            protocol.reconfigure(config)
        self.site.cors = Cors(config, self.exposed)
        self.routes.authenticator = Authenticator(config)
        self.site.timeOut = config.network.idle_timeout or None
        self.guard.reconfigure(config.network)
        self._applyTuning(config)


def buildSite(config: Config, store: UploadStore, disk: DiskService) -> ChunkdSite:
    """
    The Site serving every enabled protocol (tests use it on port 0).
    """
    return Chunkd(config, store, disk).site


def logUploadEvent(event: str, record: UploadRecord) -> None:
    """
    One log line per step of an upload's life (not per request).
    """
    _uploadLog.info("upload {uploadId} ({protocol}, {size} bytes): {event}",
                    uploadId=record.id, protocol=record.protocol, size=record.length, event=event)


_uploadLog = Logger(namespace="chunkd.uploads")
