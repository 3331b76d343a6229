"""
The only place that wires chunkd together: command-line options, the config,
and the services C{twistd chunkd} runs.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from chunkd.config import Config, ConfigError, checkStorageDirectory, loadConfig
from chunkd.disk import DiskService
from chunkd.resumable import chunkProtocols
from chunkd.store import UploadStore
from chunkd.tus import TusProtocol
from chunkd.web import ChunkdSite, Cors, UploadProtocol, buildApp


class Options(usage.Options):
    """
    C{twistd chunkd} options.  Command-line values override the file.
    """

    optParameters = [
        ["config", "c", None, "YAML configuration file (default: built-in defaults)"],
        ["listen", "l", None, "Twisted endpoint to listen on, e.g. tcp:port=8080:interface=127.0.0.1"],
        ["storage", "s", None, "directory for uploads"],
    ]

    def postOptions(self) -> None:
        overrides: Dict[str, object] = {}
        if self["listen"] is not None:
            overrides["listen"] = self["listen"]
        if self["storage"] is not None:
            overrides["storage.directory"] = self["storage"]
        try:
            config = loadConfig(self["config"], overrides)
            checkStorageDirectory(config)
        except ConfigError as e:
            # One clear line and a non-zero exit, not a usage dump or traceback.
            sys.stderr.write(f"chunkd: configuration error: {e}\n")
            raise SystemExit(2)
        self.chunkdConfig = config


class Reconciler(Service):
    """
    Checks every upload record against its data file when chunkd starts.
    """

    log = Logger()

    def __init__(self, store: UploadStore) -> None:
        self.store = store

    def startService(self) -> None:
        super().startService()
        counts = self.store.reconcile()
        self.log.info(
            "loaded {records} upload records ({missing} without data, {truncated} offsets corrected)",
            **counts,
        )


def buildProtocols(config: Config, store: UploadStore, disk: DiskService) -> List[UploadProtocol]:
    protocols: List[UploadProtocol] = []
    if config.tus.enabled:
        protocols.append(TusProtocol(config, store, disk))
    if config.uploads.enabled:
        from chunkd.facade import FacadeProtocol

        protocols.append(FacadeProtocol(config, store, disk))
    # Resumable.js at resumable.path and flow.js at flow.path, each if enabled.
    protocols.extend(chunkProtocols(config, store, disk))
    return protocols


def buildSite(config: Config, store: UploadStore, disk: DiskService) -> ChunkdSite:
    """
    The Site serving every enabled protocol (tests use it on port 0).
    """
    app, router, exposed = buildApp(buildProtocols(config, store, disk))
    return ChunkdSite(app, router, Cors(config, exposed), config.network.idle_timeout)


def makeService(options: Any, reactor: Optional[Any] = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    config: Config = options.chunkdConfig
    top = MultiService()
    disk = DiskService(reactor, config.disk.threads)
    disk.setServiceParent(top)
    store = UploadStore(config.storage.directory, disk, durable=config.storage.durable)
    Reconciler(store).setServiceParent(top)
    site = buildSite(config, store, disk)
    web = StreamServerEndpointService(serverFromString(reactor, config.listen), site)
    web._raiseSynchronously = True
    web.setServiceParent(top)
    return top
