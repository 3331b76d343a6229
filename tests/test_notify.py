"""
The sd_notify protocol against a real C{AF_UNIX} datagram socket standing in
for systemd's C{$NOTIFY_SOCKET}, and L{NotifierService} driven by a fake
"listening" L{Deferred} and a L{Clock}.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from typing import Any, Dict, List, Optional, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial import unittest

from chunkd.notify import STATUS_INTERVAL, NotifierService, SystemdNotifier


class FakeSystemd:
    """
    A bound datagram socket that collects what a notifier sends to it.
    """

    def __init__(self, testCase: unittest.TestCase, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testCase.addCleanup(self.sock.close)
        if abstract:
            name = f"chunkd-test-{os.getpid()}-{id(self)}"
            self.sock.bind(b"\0" + name.encode())
            self.address = "@" + name
        else:
            directory = tempfile.mkdtemp(prefix="chunkd-notify-")
            self.address = os.path.join(directory, "notify")
            self.sock.bind(self.address)
        self.sock.setblocking(False)

    def environ(self, **extra: str) -> Dict[str, str]:
        return dict(NOTIFY_SOCKET=self.address, **extra)

    def messages(self) -> List[str]:
        """
        Every datagram received so far, oldest first.
        """
        received = []
        while True:
            try:
                received.append(self.sock.recv(65536).decode("utf-8"))
            except BlockingIOError:
                return received


def captureWarnings(testCase: unittest.TestCase) -> List[Dict[str, Any]]:
    events: List[Dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    testCase.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


class NotifierMessageTests(unittest.TestCase):
    def setUp(self) -> None:
        self.systemd = FakeSystemd(self)
        self.notifier = SystemdNotifier(self.systemd.environ())

    def test_enabled(self) -> None:
        self.assertTrue(self.notifier.enabled)
        self.assertFalse(SystemdNotifier({}).enabled)
        self.assertFalse(SystemdNotifier({"NOTIFY_SOCKET": ""}).enabled)

    def test_ready(self) -> None:
        self.assertTrue(self.notifier.ready("listening on 127.0.0.1:8080"))
        self.assertTrue(self.notifier.ready())
        self.assertEqual(self.systemd.messages(), ["READY=1\nSTATUS=listening on 127.0.0.1:8080", "READY=1"])

    def test_reloading(self) -> None:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notifier.reloading("reloading configuration")
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        [message] = self.systemd.messages()
        lines = message.split("\n")
        self.assertEqual(lines[0], "RELOADING=1")
        name, _, usec = lines[1].partition("=")
        self.assertEqual(name, "MONOTONIC_USEC")
        self.assertTrue(before <= int(usec) <= after, (before, usec, after))
        self.assertEqual(lines[2:], ["STATUS=reloading configuration"])

    def test_stopping(self) -> None:
        self.notifier.stopping("stopping")
        self.notifier.stopping()
        self.assertEqual(self.systemd.messages(), ["STOPPING=1\nSTATUS=stopping", "STOPPING=1"])

    def test_status(self) -> None:
        self.notifier.status("3 uploads in progress")
        self.assertEqual(self.systemd.messages(), ["STATUS=3 uploads in progress"])

    def test_statusIsOneLine(self) -> None:
        """
        A newline would end the STATUS assignment and start a bogus one.
        """
        self.notifier.status("first\nREADY=1")
        self.assertEqual(self.systemd.messages(), ["STATUS=first READY=1"])

    def test_watchdog(self) -> None:
        self.notifier.watchdog()
        self.assertEqual(self.systemd.messages(), ["WATCHDOG=1"])

    def test_sendIsOneDatagram(self) -> None:
        self.assertTrue(self.notifier.send("READY=1", "STATUS=ok", "MAINPID=1"))
        self.assertEqual(self.systemd.messages(), ["READY=1\nSTATUS=ok\nMAINPID=1"])

    def test_abstractSocket(self) -> None:
        abstract = FakeSystemd(self, abstract=True)
        self.assertTrue(abstract.address.startswith("@"))
        notifier = SystemdNotifier(abstract.environ())
        self.assertTrue(notifier.ready("up"))
        self.assertTrue(notifier.watchdog())
        self.assertEqual(abstract.messages(), ["READY=1\nSTATUS=up", "WATCHDOG=1"])

    def test_defaultEnvironment(self) -> None:
        """
        Without an explicit mapping the notifier reads the process's
        environment, as systemd sets it.
        """
        previous = os.environ.get("NOTIFY_SOCKET")
        os.environ["NOTIFY_SOCKET"] = self.systemd.address
        if previous is None:
            self.addCleanup(os.environ.pop, "NOTIFY_SOCKET")
        else:
            self.addCleanup(os.environ.__setitem__, "NOTIFY_SOCKET", previous)
        SystemdNotifier().watchdog()
        self.assertEqual(self.systemd.messages(), ["WATCHDOG=1"])


class NotifierFailureTests(unittest.TestCase):
    """
    Whatever is wrong with the notification socket, the caller carries on.
    """

    def test_disabledSendsNothing(self) -> None:
        notifier = SystemdNotifier({})
        self.assertFalse(notifier.ready("x"))
        self.assertFalse(notifier.watchdog())
        self.assertFalse(notifier.reloading())
        self.assertFalse(notifier.stopping())

    def test_missingSocket(self) -> None:
        events = captureWarnings(self)
        path = os.path.join(tempfile.mkdtemp(), "gone")
        notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
        self.assertTrue(notifier.enabled)
        self.assertFalse(notifier.ready("x"))
        self.assertFalse(notifier.watchdog())
        warnings = [e for e in events if e.get("notifySocket") == path and "error" in e]
        # Logged once, not at every watchdog tick.
        self.assertEqual(len(warnings), 1)
        self.assertIn("FileNotFoundError", warnings[0]["error"])

    def test_missingAbstractSocket(self) -> None:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": f"@chunkd-nobody-listens-{os.getpid()}"})
        self.assertFalse(notifier.ready("x"))

    def test_notASocket(self) -> None:
        path = os.path.join(tempfile.mkdtemp(), "file")
        open(path, "w").close()
        self.assertFalse(SystemdNotifier({"NOTIFY_SOCKET": path}).watchdog())

    def test_streamSocket(self) -> None:
        """
        A socket of the wrong type refuses the datagram.
        """
        path = os.path.join(tempfile.mkdtemp(), "stream")
        stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(stream.close)
        stream.bind(path)
        stream.listen()
        self.assertFalse(SystemdNotifier({"NOTIFY_SOCKET": path}).watchdog())

    def test_relativeAddress(self) -> None:
        events = captureWarnings(self)
        self.assertFalse(SystemdNotifier({"NOTIFY_SOCKET": "relative/path"}).ready())
        self.assertTrue(any("unsupported NOTIFY_SOCKET" in e.get("error", "") for e in events))

    def test_fullQueueDoesNotBlock(self) -> None:
        """
        A manager that stops reading must not stall the reactor: once the
        socket's queue is full, sends fail at once.
        """
        systemd = FakeSystemd(self)
        notifier = SystemdNotifier(systemd.environ())
        started = time.monotonic()
        results = [notifier.status("x" * 1000) for _ in range(5000)]
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn(False, results)
        self.assertTrue(results[0])

    def test_recovers(self) -> None:
        events = captureWarnings(self)
        path = os.path.join(tempfile.mkdtemp(), "later")
        notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
        self.assertFalse(notifier.watchdog())
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind(path)
        self.assertTrue(notifier.watchdog())
        self.assertEqual(receiver.recv(100), b"WATCHDOG=1")
        self.assertTrue(any("works again" in (e.get("log_format") or "") for e in events))


class WatchdogIntervalTests(unittest.TestCase):
    def test_none(self) -> None:
        self.assertIsNone(SystemdNotifier({}).watchdogInterval())

    def test_usec(self) -> None:
        self.assertEqual(SystemdNotifier({"WATCHDOG_USEC": "30000000"}).watchdogInterval(), 30.0)
        self.assertEqual(SystemdNotifier({"WATCHDOG_USEC": "1500"}).watchdogInterval(), 0.0015)

    def test_ownPid(self) -> None:
        environ = {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}
        self.assertEqual(SystemdNotifier(environ).watchdogInterval(), 20.0)

    def test_otherPid(self) -> None:
        """
        The variables were meant for another process (our parent): no
        watchdog for us.
        """
        environ = {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid() + 1)}
        self.assertIsNone(SystemdNotifier(environ).watchdogInterval())

    def test_garbage(self) -> None:
        for environ in [
            {"WATCHDOG_USEC": "soon"},
            {"WATCHDOG_USEC": ""},
            {"WATCHDOG_USEC": "0"},
            {"WATCHDOG_USEC": "-5"},
            {"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "me"},
        ]:
            self.assertIsNone(SystemdNotifier(environ).watchdogInterval(), environ)


class NotifierServiceTests(unittest.TestCase):
    def setUp(self) -> None:
        self.systemd = FakeSystemd(self)
        self.clock = Clock()
        self.listening: Deferred[object] = Deferred()
        self.summaryText = "listening on 127.0.0.1:8080; 0 uploads"

    def makeService(self, watchdogUsec: Optional[int] = 30_000_000) -> NotifierService:
        extra = {"WATCHDOG_USEC": str(watchdogUsec), "WATCHDOG_PID": str(os.getpid())} if watchdogUsec else {}
        notifier = SystemdNotifier(self.systemd.environ(**extra))
        service = NotifierService(notifier, self.clock, lambda: self.listening, lambda: self.summaryText)

        def stop() -> None:
            if service.running:
                service.stopService()

        self.addCleanup(stop)
        return service

    def test_lifecycle(self) -> None:
        service = self.makeService()
        service.startService()
        # The first ping goes out at once, before chunkd listens.
        self.assertEqual(self.systemd.messages(), ["WATCHDOG=1"])
        self.assertFalse(service.isReady)

        self.listening.callback(None)
        self.assertTrue(service.isReady)
        self.assertEqual(self.systemd.messages(), ["READY=1\nSTATUS=listening on 127.0.0.1:8080; 0 uploads"])

        # Every half watchdog interval, from the reactor.
        self.clock.advance(14.9)
        self.assertEqual(self.systemd.messages(), [])
        self.clock.advance(0.1)
        self.assertEqual(self.systemd.messages(), ["WATCHDOG=1"])

        # A changed summary rides along with the next ping.
        self.summaryText = "listening on 127.0.0.1:8080; 2 uploads"
        self.clock.advance(15)
        self.assertEqual(self.systemd.messages(), ["WATCHDOG=1\nSTATUS=listening on 127.0.0.1:8080; 2 uploads"])
        self.clock.advance(15)
        self.assertEqual(self.systemd.messages(), ["WATCHDOG=1"])

        service.stopService()
        self.assertEqual(self.systemd.messages(), ["STOPPING=1\nSTATUS=stopping: finishing in-flight writes"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(60)
        self.assertEqual(self.systemd.messages(), [])

    def test_alreadyListening(self) -> None:
        """
        A port that opened synchronously: READY=1 right after the first ping.
        """
        service = self.makeService()
        service.whenListening = lambda: succeed(None)
        service.startService()
        self.assertEqual(
            self.systemd.messages(),
            ["WATCHDOG=1", "READY=1\nSTATUS=listening on 127.0.0.1:8080; 0 uploads"],
        )

    def test_notListening(self) -> None:
        service = self.makeService()
        service.startService()
        self.listening.errback(OSError("Address already in use"))
        self.assertEqual(self.systemd.messages(), ["WATCHDOG=1", "STATUS=not listening: Address already in use"])
        self.assertFalse(service.isReady)
        # The failure is left to the Deferred's owner.
        self.failureResultOf(self.listening, OSError)
        # The watchdog keeps going: systemd's start time-out decides.
        self.clock.advance(15)
        self.assertEqual(self.systemd.messages(), ["WATCHDOG=1"])

    def test_resultPassesThrough(self) -> None:
        """
        Others waiting on the same Deferred still get the listening port.
        """
        service = self.makeService()
        service.startService()
        port = object()
        self.listening.callback(port)
        self.assertIs(self.successResultOf(self.listening), port)
        self.assertTrue(service.isReady)

    def test_stoppedBeforeListening(self) -> None:
        service = self.makeService()
        service.startService()
        service.stopService()
        self.listening.callback(None)
        self.assertEqual(
            self.systemd.messages(),
            ["WATCHDOG=1", "STOPPING=1\nSTATUS=stopping: finishing in-flight writes"],
        )

    def test_noWatchdog(self) -> None:
        """
        Without WatchdogSec only the status is refreshed, and only when it
        changed.
        """
        service = self.makeService(watchdogUsec=None)
        service.startService()
        self.listening.callback(None)
        self.assertEqual(self.systemd.messages(), ["READY=1\nSTATUS=listening on 127.0.0.1:8080; 0 uploads"])
        self.clock.advance(STATUS_INTERVAL)
        self.assertEqual(self.systemd.messages(), [])
        self.summaryText = "busy"
        self.clock.advance(STATUS_INTERVAL)
        self.assertEqual(self.systemd.messages(), ["STATUS=busy"])

    def test_brokenSummary(self) -> None:
        """
        A bug in the summary never stops the watchdog.
        """
        service = self.makeService()

        def broken() -> str:
            raise ZeroDivisionError()

        service.summary = broken
        service.startService()
        self.listening.callback(None)
        self.clock.advance(15)
        self.clock.advance(15)
        messages = self.systemd.messages()
        self.assertEqual(messages[:2], ["WATCHDOG=1", "READY=1\nSTATUS=running (no summary: see the log)"])
        self.assertEqual(messages[2:], ["WATCHDOG=1", "WATCHDOG=1"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 3)

    def test_brokenSocketKeepsRunning(self) -> None:
        """
        The service starts, ticks and stops with a notification socket that
        refuses everything.
        """
        notifier = SystemdNotifier({"NOTIFY_SOCKET": os.path.join(tempfile.mkdtemp(), "gone"),
                                    "WATCHDOG_USEC": "2000000"})
        service = NotifierService(notifier, self.clock, lambda: succeed(None), lambda: "ok")
        service.startService()
        self.assertTrue(service.isReady)
        self.clock.advance(1)
        self.clock.advance(1)
        service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_disabled(self) -> None:
        """
        Outside systemd nothing is scheduled.
        """
        service = NotifierService(SystemdNotifier({}), self.clock, lambda: self.listening, lambda: "ok")
        service.startService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        service.stopService()

    def test_reload(self) -> None:
        service = self.makeService()
        service.startService()
        self.listening.callback(None)
        self.systemd.messages()
        self.summaryText = "listening on 127.0.0.1:8080; reloaded"
        finished: Deferred[str] = Deferred()
        result = service.reload(lambda: finished)
        [reloading] = self.systemd.messages()
        self.assertTrue(reloading.startswith("RELOADING=1\nMONOTONIC_USEC="), reloading)
        self.assertTrue(reloading.endswith("\nSTATUS=reloading configuration"), reloading)
        finished.callback("changed: limits.max_size")
        self.assertEqual(self.successResultOf(result), "changed: limits.max_size")
        self.assertEqual(self.systemd.messages(), ["READY=1\nSTATUS=listening on 127.0.0.1:8080; reloaded"])
        # The status just sent is not repeated at the next tick.
        self.clock.advance(15)
        self.assertEqual(self.systemd.messages(), ["WATCHDOG=1"])

    def test_refusedReload(self) -> None:
        """
        READY=1 follows RELOADING=1 even when the reload is refused, and the
        status line says so until a reload succeeds.
        """
        service = self.makeService()
        service.startService()
        self.listening.callback(None)
        self.systemd.messages()

        def refuse() -> None:
            raise ValueError("limits.max_size: not a size")

        self.failureResultOf(service.reload(refuse), ValueError)
        messages = self.systemd.messages()
        self.assertTrue(messages[0].startswith("RELOADING=1\n"))
        self.assertEqual(
            messages[1:],
            ["READY=1\nSTATUS=last reload failed, old configuration kept; listening on 127.0.0.1:8080; 0 uploads"],
        )
        self.clock.advance(15)
        self.assertEqual(self.systemd.messages(), ["WATCHDOG=1"])

        service.reload(lambda: None)
        messages = self.systemd.messages()
        self.assertEqual(messages[1:], ["READY=1\nSTATUS=listening on 127.0.0.1:8080; 0 uploads"])

    def test_reloadBeforeReady(self) -> None:
        """
        SIGHUP during start-up: the reload runs, but READY=1 waits for the
        port.
        """
        service = self.makeService()
        service.startService()
        self.systemd.messages()
        self.assertEqual(self.successResultOf(service.reload(lambda: "done")), "done")
        self.assertEqual(self.systemd.messages(), [])
        self.listening.callback(None)
        self.assertEqual(self.systemd.messages(), ["READY=1\nSTATUS=listening on 127.0.0.1:8080; 0 uploads"])
