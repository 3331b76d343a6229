"""
The only place that wires chunkd together: command-line options, the config,
and the services C{twistd chunkd} runs (after magic-wormhole-mailbox-server's
C{server_tap}).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Dict, Optional

from twisted.python import usage

from chunkd.config import Config, ConfigError, checkStorageDirectory, loadConfig
from chunkd.lazytls import withoutTLSUnlessNeeded

if TYPE_CHECKING:
    from twisted.application.service import IService


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
            # Before Twisted's TCP and endpoint modules are first imported
            # (checking the listeners does): they decide once whether TLS
            # exists (chunkd/lazytls.py).
            config = loadConfig(self["config"], overrides, beforeEndpoints=withoutTLSUnlessNeeded)
            checkStorageDirectory(config)
        except ConfigError as e:
            # One clear line and a non-zero exit, not a usage dump or traceback.
            sys.stderr.write(f"chunkd: configuration error: {e}\n")
            raise SystemExit(2)
        self.chunkdConfig = config


def makeService(options: Any, reactor: Optional[Any] = None) -> "IService":
    # Imported here, not at the top: twistd imports this module for its
    # Options before the config is read, and these pull in the reactor.
    from twisted.internet.endpoints import serverFromString

    from chunkd import allocator
    from chunkd.app import Chunkd
    from chunkd.disk import DiskService
    from chunkd.hooks import HookSender
    from chunkd.janitor import Janitor
    from chunkd.logs import LogLevelControl
    from chunkd.notify import NotifierService, SystemdNotifier
    from chunkd.reload import Reloader
    from chunkd.services import (
        Reconciler,
        SequentialMultiService,
        StartupHooks,
        WebService,
        summary,
    )
    from chunkd.store import UploadStore

    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    config: Config = options.chunkdConfig
    allocator.tune()
    top = SequentialMultiService()
    # Children stop in reverse order: the web server first (finishing the
    # bodies in flight), the disk pool last (after their final writes).
    disk = DiskService(reactor, config.disk.threads)
    disk.whenIdle = allocator.giveBack
    disk.setServiceParent(top)
    store = UploadStore(config.storage.directory, disk, durable=config.storage.durable)
    Reconciler(store).setServiceParent(top)
    chunkd = Chunkd(config, store, disk)
    hooks = HookSender(config, store, reactor)
    hooks.setServiceParent(top)
    janitor = Janitor(store, config, reactor)
    janitor.setServiceParent(top)
    if chunkd.admin is not None:
        chunkd.admin.janitor = janitor
        chunkd.admin.hooks = hooks
    if chunkd.metrics is not None:
        metrics = chunkd.metrics
        janitor.onReport = lambda report: metrics.setActive(report.active)
    web = WebService([serverFromString(reactor, e) for e in config.listen], chunkd.site, reactor,
                     lambda: chunkd.config.network.shutdown_grace)
    web.setServiceParent(top)
    logLevel = LogLevelControl(config.log_level)
    reloader = Reloader(options["config"], options.overrides, config,
                        [chunkd, janitor, hooks, logLevel])
    # Added last: it starts once the rest has, and says STOPPING=1 first.
    notifier = NotifierService(SystemdNotifier(), reactor, lambda: web.whenListening,
                               lambda: summary(chunkd, janitor))
    StartupHooks(logLevel, reloader, reactor, lambda: notifier.reload(reloader.reload)).setServiceParent(top)
    notifier.setServiceParent(top)
    return top
