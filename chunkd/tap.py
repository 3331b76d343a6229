"""
The only place that wires chunkd together: command-line options, the config,
and the services C{twistd chunkd} runs.
"""

from __future__ import annotations

import gc
import sys
from typing import Any, Callable, Dict, List, Optional

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from chunkd.config import Config, ConfigError, checkStorageDirectory, loadConfig
from chunkd.disk import DiskService
from chunkd.resumable import chunkProtocols
from chunkd.hooks import HookSender
from chunkd.janitor import Janitor
from chunkd.logs import LogLevelControl
from chunkd.metrics import Metrics, MetricsEndpoint
from chunkd.notify import NotifierService, SystemdNotifier
from chunkd.reload import Reloader
from chunkd.store import UploadRecord, UploadStore
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
        self.overrides = overrides
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


class Chunkd:
    """
    One chunkd: the store, the protocols, the Site and the metrics built
    from a config -- what a test needs to serve on port 0, and what
    L{makeService} wraps in services.
    """

    def __init__(self, config: Config, store: UploadStore, disk: DiskService) -> None:
        self.config = config
        self.store = store
        self.disk = disk
        self.protocols = buildProtocols(config, store, disk)
        self.metrics: Optional[Metrics] = None
        installed: List[Any] = list(self.protocols)
        if config.metrics.enabled:
            self.metrics = Metrics(config, store, disk)
            installed.append(MetricsEndpoint(self.metrics, config.metrics.path))
        app, router, exposed = buildApp(installed)
        self.cors = Cors(config, exposed)
        self.exposed = exposed
        self.site = ChunkdSite(app, router, self.cors, config.network.idle_timeout, self.metrics)
        self._applyTuning(config)
        store.events.subscribe(logUploadEvent)

    def _applyTuning(self, config: Config) -> None:
        self.disk.minBatch = config.disk.min_batch
        self.site.readSize = config.disk.read_size
        self.site.logEveryRequest = config.log_level == "debug"

    def reconfigure(self, config: Config) -> None:
        """
        Take a reloaded config: protocols read it per request, CORS and
        the idle timeout apply to new requests and connections.
        """
        self.config = config
        for protocol in self.protocols:
            protocol.config = config  # type: ignore[attr-defined]
        self.site.cors = Cors(config, self.exposed)
        self.site.timeOut = config.network.idle_timeout or None
        self._applyTuning(config)
        if self.metrics is not None:
            self.metrics.config = config


def buildSite(config: Config, store: UploadStore, disk: DiskService) -> ChunkdSite:
    """
    The Site serving every enabled protocol (tests use it on port 0).
    """
    return Chunkd(config, store, disk).site


class WebService(Service):
    """
    Listens on the configured endpoint; on stop, stops accepting, lets
    requests in progress finish for up to C{network.shutdown_grace}
    seconds, then cuts the rest (their bytes are still recorded).

    @ivar whenListening: fires with the listening port.
    """

    name = "web"

    def __init__(self, endpoint: Any, site: ChunkdSite, reactor: Any, grace: Callable[[], float]) -> None:
        self.endpoint = endpoint
        self.site = site
        self.reactor = reactor
        self.grace = grace
        self.port: Any = None
        self.whenListening: Deferred[Any] = Deferred()

    def startService(self) -> None:
        super().startService()
        d = self.endpoint.listen(self.site)

        def listening(port: Any) -> Any:
            self.port = port
            self.whenListening.callback(port)
            return port

        def failed(failure: Any) -> None:
            Logger().failure("cannot listen", failure)
            self.whenListening.errback(failure)
            self.reactor.stop()

        d.addCallbacks(listening, failed)

    @inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            yield self.port.stopListening()
        yield self.site.shutdown(self.reactor, self.grace())


class SequentialMultiService(MultiService):
    """
    A MultiService that stops its children one after the other, last added
    first, each only once the one before has finished stopping.  Twisted's
    MultiService stops them all at once, which would stop the disk pool
    while the web server is still letting bodies in flight finish.
    """

    @inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        for child in reversed(list(self)):
            try:
                yield child.stopService()
            except Exception:
                Logger().failure("stopping {service}", service=child)


def makeService(options: Any, reactor: Optional[Any] = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    config: Config = options.chunkdConfig
    tuneMalloc()
    top = SequentialMultiService()
    # Children stop in reverse order: the web server first (finishing the
    # bodies in flight), the disk pool last (after their final writes).
    disk = DiskService(reactor, config.disk.threads)
    disk.setServiceParent(top)
    store = UploadStore(config.storage.directory, disk, durable=config.storage.durable)
    Reconciler(store).setServiceParent(top)
    chunkd = Chunkd(config, store, disk)
    hooks = HookSender(config, store, reactor)
    hooks.setServiceParent(top)
    janitor = Janitor(store, config, reactor)
    janitor.setServiceParent(top)
    if chunkd.metrics is not None:
        metrics = chunkd.metrics
        janitor.onReport = lambda report: metrics.setActive(report.active)
    web = WebService(serverFromString(reactor, config.listen), chunkd.site, reactor,
                     lambda: chunkd.config.network.shutdown_grace)
    web.setServiceParent(top)
    logLevel = LogLevelControl(config.log_level)
    reloader = Reloader(
        options["config"], options.overrides, config,
        [chunkd.reconfigure, janitor.reconfigure, hooks.reconfigure,
         lambda c: logLevel.setLevel(c.log_level)],
    )
    # Added last: it starts once the rest has, and says STOPPING=1 first.
    notifier = NotifierService(SystemdNotifier(), reactor, lambda: web.whenListening,
                               lambda: summary(chunkd, janitor))
    StartupHooks(logLevel, reloader, reactor, lambda: notifier.reload(reloader.reload)).setServiceParent(top)
    notifier.setServiceParent(top)
    return top


def summary(chunkd: Chunkd, janitor: Janitor) -> str:
    """
    The one line C{systemctl status} shows.
    """
    report = janitor.lastReport
    active = "?" if report is None else str(report.active)
    return (f"serving {', '.join(type(p).__name__ for p in chunkd.protocols)}; "
            f"{active} uploads in progress; {chunkd.disk.queued} bytes queued for disk")


def logUploadEvent(event: str, record: UploadRecord) -> None:
    """
    One log line per step of an upload's life (not per request).
    """
    _uploadLog.info("upload {uploadId} ({protocol}, {size} bytes): {event}",
                    uploadId=record.id, protocol=record.protocol, size=record.length, event=event)


_uploadLog = Logger(namespace="chunkd.uploads")


def tuneMalloc() -> None:
    """
    Keep glibc from handing freed memory back to the kernel after every
    socket read (and taking it back on the next): with the thresholds at
    their dynamic defaults, that churn costs about a quarter of chunkd's
    kernel time per GiB received (bench/README.md).  Elsewhere, nothing.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024)
        libc.mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024)
    except (OSError, AttributeError):
        pass


def freezeStartupObjects() -> None:
    """
    Everything built at start-up lives as long as the daemon: move it out of
    the garbage collector's generations, so collections stay short.
    """
    gc.collect()
    gc.freeze()


class StartupHooks(Service):
    """
    What must happen once twistd has set up logging and signals: the log
    level filter, and the SIGHUP handler.
    """

    def __init__(
        self, logLevel: LogLevelControl, reloader: Reloader, reactor: Any, runReload: Callable[[], Any]
    ) -> None:
        self.logLevel = logLevel
        self.reloader = reloader
        self.reactor = reactor
        self.runReload = runReload

    def startService(self) -> None:
        super().startService()
        # twistd and `python -m twisted` begin logging after the services
        # start, but always before the reactor runs.
        self.reactor.callWhenRunning(self.logLevel.install)
        self.reactor.callWhenRunning(freezeStartupObjects)
        # SIGHUP right away: a HUP before the reactor runs would otherwise
        # kill the daemon (the reactor installs no handler of its own for it).
        self.reloader.installSignalHandler(self.reactor, self.runReload)
