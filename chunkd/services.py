"""
The long-running pieces C{twistd chunkd} starts besides the upload logic:
start-up reconciliation, the listening web service with its graceful stop,
ordered shutdown, what must wait for twistd's logging, and the process
tuning done once at start.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any, Callable, Dict, List, Sequence

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, FirstError, gatherResults, inlineCallbacks
from twisted.logger import Logger

from chunkd.app import Chunkd
from chunkd.janitor import Janitor
from chunkd.logs import LogLevelControl
from chunkd.once import OneShotResult
from chunkd.reload import Reloader
from chunkd.store import Reconciliation, UploadStore
from chunkd.web import ChunkdSite


#: records the start-up check reads per disk-pool job
RECONCILE_BATCH = 500


class Reconciler(Service):
    """
    Checks every upload record against its data file when chunkd starts --
    in the disk pool, in the background: the first request is answered at
    once however many records there are, and each upload is corrected only
    under its own lock (L{UploadStore.reconcileOne}), so a process that
    starts beside others serving the same directory never corrects an
    upload they are writing.  An upload a request touches first is checked
    then, under the lock that request takes (L{UploadStore.open}), so
    nothing waits for the pass to reach it.

    The pass goes a batch of C{batch} records per disk-pool job
    (L{Reconciliation}), the directory streamed: it never holds a disk
    thread for more than a batch, never holds a list of every name (a
    million uploads' names alone would be some 200 MB), and a stop ends it
    between two batches instead of after the whole store.  The janitor's
    first sweep waits for it (L{UploadStore.startupCheck}): two passes over
    every record at once would take twice the disk threads and double the
    contention for the interpreter that the requests served meanwhile see
    as latency.
    """

    log = Logger()

    def __init__(self, store: UploadStore, batch: int = RECONCILE_BATCH) -> None:
        self.store = store
        self.batch = batch
        self.done: "Deferred[Any] | None" = None
        #: what the pass found so far (records checked, corrections)
        self.counts: Dict[str, int] = {}

    def startService(self) -> None:
        super().startService()
        self.store.startupCheck = OneShotResult()
        self.done = self._check()

    @inlineCallbacks
    def _check(self) -> Any:
        assert self.store.startupCheck is not None
        ended = self.store.startupCheck
        started = self.store.clock()
        check = Reconciliation(self.store)
        self.counts = check.counts
        try:
            while self.running:
                finished = yield self.store.disk.run(check.step, self.batch)
                if finished:
                    self.log.info(
                        "checked {records} upload records in {seconds:.1f}s ({missing} without data, "
                        "{truncated} offsets corrected, {busy} being written elsewhere)",
                        seconds=self.store.clock() - started, **check.counts,
                    )
                    return
        except Exception:
            self.log.failure("checking the upload records failed")
        finally:
            check.close()
            ended.fire(None)

    def stopService(self) -> "Deferred[Any] | None":
        super().stopService()
        return self.done


class WebService(Service):
    """
    Listens on every configured endpoint (HTTPS on a public address and
    HTTP on loopback, say), all serving the one Site; on stop, stops
    accepting, lets requests in progress finish for up to
    C{network.shutdown_grace} seconds, then cuts the rest (their bytes are
    still recorded).

    @ivar whenListening: fires with the listening ports once every
        endpoint listens; fails (and stops the reactor) if one cannot.
    """

    name = "web"

    def __init__(self, endpoints: Sequence[Any], site: ChunkdSite, reactor: Any,
                 grace: Callable[[], float]) -> None:
        self.endpoints = list(endpoints)
        self.site = site
        self.reactor = reactor
        self.grace = grace
        self.ports: List[Any] = []
        self.whenListening: Deferred[Any] = Deferred()

    def startService(self) -> None:
        super().startService()

        def listening(ports: List[Any]) -> Any:
            self.whenListening.callback(ports)
            return ports

        def failed(failure: Any) -> None:
            failure = failure.value.subFailure if isinstance(failure.value, FirstError) else failure
            Logger().error("cannot listen: {reason}", reason=failure.getErrorMessage())
            self.whenListening.errback(failure)
            self.whenListening.addErrback(lambda _: None)  # reported just above
            # A daemon that cannot serve must not linger half-started: stop
            # (the reactor may not be running yet: services start before it),
            # close the ports that did open, and exit non-zero afterwards.
            self.reactor.addSystemEventTrigger("after", "shutdown", exitFailed)
            self.reactor.callWhenRunning(self.reactor.stop)

        def opened(port: Any) -> Any:
            # Kept as each opens, so a stop closes them even if another fails.
            self.ports.append(port)
            return port

        self.ports = []
        d = gatherResults([endpoint.listen(self.site).addCallback(opened) for endpoint in self.endpoints],
                          consumeErrors=True)
        d.addCallbacks(listening, failed)

    @inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        yield gatherResults([port.stopListening() for port in self.ports])
        self.ports = []
        yield self.site.shutdown(self.reactor, self.grace())


def exitFailed() -> None:
    """
    Exit with status 1 once the reactor has shut down (twist itself would
    exit 0): systemd and shell scripts see that the start failed.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


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


def summary(chunkd: Chunkd, janitor: Janitor) -> str:
    """
    The one line C{systemctl status} shows.
    """
    report = janitor.lastReport
    active = "?" if report is None else str(report.active)
    return (f"serving {', '.join(type(p).__name__ for p in chunkd.protocols)}; "
            f"{active} uploads in progress; {chunkd.disk.queued} bytes queued for disk")


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
