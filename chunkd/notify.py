"""
Telling systemd how chunkd is doing: the C{sd_notify} protocol, spoken
directly.

The protocol is one datagram of newline-separated C{NAME=value} lines sent
to the C{AF_UNIX} socket named by C{$NOTIFY_SOCKET}, so it needs a few lines
of socket code rather than a dependency on libsystemd or a binding.

L{SystemdNotifier} sends the messages; L{NotifierService} decides when:
C{READY=1} once chunkd listens, C{WATCHDOG=1} from the reactor thread (so a
reactor that is stuck really misses its watchdog and systemd restarts it),
C{RELOADING=1}/C{READY=1} around a reload and C{STOPPING=1} at shutdown,
each with a short C{STATUS=} line for C{systemctl status}.

Outside systemd (no C{$NOTIFY_SOCKET}) everything here does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, List, Mapping, Optional, Union

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

#: How often the status line is refreshed when systemd asked for no watchdog.
STATUS_INTERVAL = 30.0


class SystemdNotifier:
    """
    Sends C{sd_notify} messages to the socket in C{$NOTIFY_SOCKET}.

    Sending never raises and never blocks: a missing, refused or full
    notification socket is logged (once per distinct error, so a broken
    socket does not fill the journal at every watchdog tick) and the
    daemon carries on.  A lost C{WATCHDOG=1} is resent at the next tick;
    a lost C{READY=1} shows up as a start time-out next to our log line.

    @ivar enabled: whether C{$NOTIFY_SOCKET} names a socket to talk to.
    """

    log = Logger()

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        """
        @param environ: where to find C{NOTIFY_SOCKET}, C{WATCHDOG_USEC} and
            C{WATCHDOG_PID}; tests pass their own mapping.
        """
        self._environ = environ
        self._socketName: str = environ.get("NOTIFY_SOCKET", "")
        self.enabled: bool = bool(self._socketName)
        self._lastError: Optional[str] = None

    def _address(self) -> Union[str, bytes]:
        """
        The C{sendto} address for C{$NOTIFY_SOCKET}: a leading C{@} names a
        socket in the abstract namespace, which Linux spells with a leading
        NUL byte.

        @raise ValueError: for anything but an absolute path or C{@name}
            (systemd 254+ also accepts C{vsock:}, which chunkd does not need).
        """
        name = self._socketName
        if name.startswith("@"):
            return b"\0" + name[1:].encode("utf-8")
        if name.startswith("/"):
            return name
        raise ValueError(f"unsupported NOTIFY_SOCKET address {name!r}")

    def send(self, *assignments: str) -> bool:
        """
        Send C{assignments} (C{"READY=1"}, C{"STATUS=…"}) as one datagram,
        so systemd sees them together.

        @return: whether the datagram was sent; C{False} when disabled or
            when sending failed (the failure is logged, never raised).
        """
        if not self.enabled or not assignments:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            address = self._address()
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # MSG_DONTWAIT: a wedged manager with a full queue must not
                # stall the reactor; the message is dropped and logged instead.
                sock.sendto(message, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL, address)
        except (OSError, ValueError) as e:
            error = f"{type(e).__name__}: {e}"
            if error != self._lastError:
                self._lastError = error
                self.log.warn(
                    "cannot notify systemd at {notifySocket}: {error}",
                    notifySocket=self._socketName,
                    error=error,
                    message=message.decode("utf-8", "replace"),
                )
            return False
        if self._lastError is not None:
            self._lastError = None
            self.log.info("notifying systemd at {notifySocket} works again", notifySocket=self._socketName)
        return True

    def ready(self, status: Optional[str] = None) -> bool:
        """
        C{READY=1}: chunkd has started (or finished reloading) and serves.
        """
        return self.send("READY=1", *_status(status))

    def reloading(self, status: Optional[str] = None) -> bool:
        """
        C{RELOADING=1}: a reload has begun; follow it with L{ready}.

        C{MONOTONIC_USEC} is the moment of the reload on C{CLOCK_MONOTONIC},
        which systemd 253+ requires with C{Type=notify-reload} to match the
        message to its own reload request; older versions ignore it.
        """
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={now}", *_status(status))

    def stopping(self, status: Optional[str] = None) -> bool:
        """
        C{STOPPING=1}: chunkd is shutting down, so systemd does not take a
        slow drain of in-flight uploads for a hang.
        """
        return self.send("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        """
        C{STATUS=}: one line shown by C{systemctl status}.
        """
        return self.send(*_status(text))

    def watchdog(self) -> bool:
        """
        C{WATCHDOG=1}: chunkd is alive; systemd restarts it when these stop
        coming for C{WatchdogSec}.
        """
        return self.send("WATCHDOG=1")

    def watchdogInterval(self) -> Optional[float]:
        """
        The watchdog time-out systemd asked for, in seconds, like
        C{sd_watchdog_enabled()}.

        @return: C{None} when there is no watchdog, or when C{WATCHDOG_PID}
            names another process (the variables were inherited by a child
            of the process they were meant for).
        """
        pid = self._environ.get("WATCHDOG_PID")
        if pid is not None:
            try:
                if int(pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(self._environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        if usec <= 0:
            return None
        return usec / 1_000_000


def _status(text: Optional[str]) -> List[str]:
    """
    A C{STATUS=} assignment for C{text}, on one line (a newline would end
    the assignment and start a bogus one).
    """
    if text is None:
        return []
    return ["STATUS=" + " ".join(text.splitlines())]


class NotifierService(Service):
    """
    Keeps systemd informed for the life of the daemon.

    On start it waits for C{whenListening()} and then sends C{READY=1} with
    C{STATUS=summary()}.  Until it stops, a L{LoopingCall} on the reactor
    sends C{WATCHDOG=1} every half watchdog interval (systemd's advice), with
    the status line when it has changed; without a watchdog it only
    refreshes the status, every L{STATUS_INTERVAL} seconds.  On stop it sends
    C{STOPPING=1}.

    Add it to the daemon's L{MultiService} I{last}: it then starts after
    the listening service, so C{whenListening} refers to a port being
    opened, and (children stopping in reverse order) stops first, so
    C{STOPPING=1} goes out before the slow drain of uploads in flight rather
    than after it.  The watchdog stops with it: systemd only watches a
    running service, and C{TimeoutStopSec} bounds the stop instead.

    C{READY=1} may go out before C{reactor.run()} when the port opens
    synchronously: that is still the truth, as the kernel already queues
    connections on the listening socket.
    """

    name = "systemd-notify"
    log = Logger()

    def __init__(
        self,
        notifier: SystemdNotifier,
        reactor: IReactorTime,
        whenListening: Callable[[], "Deferred[Any]"],
        summary: Callable[[], str],
    ) -> None:
        """
        @param notifier: where the messages go.
        @param reactor: runs the watchdog loop; it must be the reactor that
            serves requests, or the watchdog proves nothing.
        @param whenListening: returns a L{Deferred} that fires once chunkd
            listens (and fails if it cannot).  It is only observed, its
            result passed on unchanged, so it may be a L{Deferred} that
            others wait on too (C{lambda: web.whenListening}).
        @param summary: a short, one-line description of the daemon's state
            for C{STATUS=}, e.g. its endpoint and active uploads.
        """
        self.notifier = notifier
        self.reactor = reactor
        self.whenListening = whenListening
        self.summary = summary
        self.isReady = False
        self._loop: Optional[LoopingCall] = None
        self._loopDone: Optional["Deferred[Any]"] = None
        self._lastStatus: Optional[str] = None
        # Prepended to the summary after a refused reload, until one succeeds,
        # so `systemctl status` keeps saying that the file on disk is not
        # what runs.
        self._note = ""
        self._watchdog = notifier.watchdogInterval()

    def startService(self) -> None:
        super().startService()
        if not self.notifier.enabled:
            return
        interval = self._watchdog / 2 if self._watchdog is not None else STATUS_INTERVAL
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.reactor
        # The first WATCHDOG=1 goes out at once: systemd counts from the
        # start of the service, and pings before READY=1 are accepted.
        self._loopDone = self._loop.start(interval, now=True)
        self._loopDone.addErrback(lambda f: self.log.failure("the systemd watchdog loop stopped", f))
        maybeDeferred(self.whenListening).addBoth(self._observeListening)

    def _summary(self) -> str:
        """
        C{summary()}, or a placeholder when it fails: a bug in the summary
        must not stop the watchdog.
        """
        try:
            text = self.summary()
        except Exception:
            self.log.failure("cannot summarize chunkd's state for systemd")
            text = "running (no summary: see the log)"
        return self._note + text

    def _observeListening(self, result: object) -> object:
        """
        Send C{READY=1} (or say why not) once C{whenListening()} fires, and
        pass its result on unchanged: the L{Deferred} may be one that others
        wait on too, such as the listening service's own.
        """
        if not self.running:
            return result
        if isinstance(result, Failure):
            # No READY=1: systemd fails the start after TimeoutStartSec, and
            # the status line says why meanwhile.  Whoever owns the Deferred
            # reports the failure itself.
            reason = result.getErrorMessage()
            self.log.warn("not telling systemd chunkd is ready: {reason}", reason=reason)
            self.notifier.status(f"not listening: {reason}")
        else:
            self.isReady = True
            self._lastStatus = self._summary()
            self.notifier.ready(self._lastStatus)
        return result

    def _tick(self) -> None:
        """
        One watchdog ping and status refresh.  It must never raise, or the
        L{LoopingCall} would stop and systemd would kill a healthy daemon.
        """
        assignments: List[str] = []
        if self._watchdog is not None:
            assignments.append("WATCHDOG=1")
        if self.isReady:
            current = self._summary()
            if current != self._lastStatus:
                self._lastStatus = current
                assignments.extend(_status(current))
        if assignments:
            self.notifier.send(*assignments)

    def reload(self, action: Callable[[], Any]) -> "Deferred[Any]":
        """
        Run C{action} (the daemon's reload, which may return a L{Deferred})
        between C{RELOADING=1} and C{READY=1}.

        C{READY=1} is sent whether the reload succeeded or was refused: the
        old configuration still serves, and systemd must leave the
        "reloading" state either way.  After a refusal the status line says
        so until a reload succeeds (the reason is in the log).

        A reload before chunkd is ready (SIGHUP during start-up) sends
        neither: C{READY=1} then would claim a port that is not open yet.

        @return: a L{Deferred} with C{action}'s result or failure.
        """
        announce = self.isReady and self.running
        if announce:
            self.notifier.reloading("reloading configuration")

        def done(result: object) -> object:
            if isinstance(result, Failure):
                self._note = "last reload failed, old configuration kept; "
            else:
                self._note = ""
            if announce:
                self._lastStatus = self._summary()
                self.notifier.ready(self._lastStatus)
            return result

        return maybeDeferred(action).addBoth(done)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self.notifier.enabled:
            self.notifier.stopping("stopping: finishing in-flight writes")
