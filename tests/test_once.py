"""
chunkd.once: one result handed to many waiters, one piece of work per key.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from twisted.trial import unittest

from chunkd.once import OneShotResult, SharedWork


class OneShotResultTests(unittest.TestCase):
    def test_everyWaiterGetsTheValue(self) -> None:
        shared: OneShotResult[int] = OneShotResult()
        early = [shared.whenFired() for _ in range(3)]
        shared.fire(7)
        late = shared.whenFired()
        self.assertEqual([self.successResultOf(d) for d in early + [late]], [7, 7, 7, 7])

    def test_aWaiterCannotChangeAnothersResult(self) -> None:
        shared: OneShotResult[List[int]] = OneShotResult()
        first, second = shared.whenFired(), shared.whenFired()
        first.addCallback(lambda value: None)  # consumes its own copy only
        shared.fire([1])
        self.assertEqual(self.successResultOf(second), [1])

    def test_failureReachesEveryWaiter(self) -> None:
        shared: OneShotResult[int] = OneShotResult()
        waiters = [shared.whenFired(), shared.whenFired()]
        shared.fire(Failure(ValueError("boom")))
        for d in waiters + [shared.whenFired()]:
            self.failureResultOf(d, ValueError)

    def test_firstFireWins(self) -> None:
        shared: OneShotResult[int] = OneShotResult()
        shared.fire(1)
        shared.fire(2)
        self.assertTrue(shared.fired)
        self.assertEqual(self.successResultOf(shared.whenFired()), 1)

    def test_ofTakesOverTheDeferredsResult(self) -> None:
        work: Deferred[str] = Deferred()
        shared = OneShotResult.of(work)
        self.assertFalse(shared.fired)
        work.errback(RuntimeError("failed"))
        # The failure is handed on, not left unhandled in work's chain.
        self.failureResultOf(shared.whenFired(), RuntimeError)
        self.assertIsNone(self.successResultOf(work))


class SharedWorkTests(unittest.TestCase):
    def test_oneRunPerKeyWhileItRuns(self) -> None:
        work: SharedWork[str] = SharedWork()
        started: List[Deferred[str]] = []

        def start() -> Deferred[str]:
            d: Deferred[str] = Deferred()
            started.append(d)
            return d

        waiters = [work.run("a", start) for _ in range(3)]
        other = work.run("b", start)
        self.assertEqual(len(started), 2)
        self.assertIn("a", work)
        started[0].callback("done")
        self.assertEqual([self.successResultOf(d) for d in waiters], ["done"] * 3)
        self.assertNotIn("a", work)
        self.assertNoResult(other)

    def test_startsAfreshOnceOver(self) -> None:
        work: SharedWork[int] = SharedWork()
        calls: List[int] = []

        def start() -> Deferred[int]:
            calls.append(1)
            return succeed(len(calls))

        self.assertEqual(self.successResultOf(work.run("k", start)), 1)
        self.assertEqual(self.successResultOf(work.run("k", start)), 2)

    def test_aWaiterAskingAgainStartsNewWork(self) -> None:
        """
        The key is forgotten before the waiters run: one that asks again
        from its callback gets a new piece of work, not the finished one.
        """
        work: SharedWork[Any] = SharedWork()
        first: Deferred[Any] = Deferred()
        again: List[Deferred[Any]] = []

        def askAgain(_: Any) -> None:
            again.append(work.run("k", lambda: succeed("second")))

        work.run("k", lambda: first).addCallback(askAgain)
        first.callback("first")
        self.assertEqual(self.successResultOf(again[0]), "second")

    def test_failureIsSharedAndForgotten(self) -> None:
        work: SharedWork[int] = SharedWork()
        d1 = work.run("k", lambda: fail(OSError("disk")))
        self.failureResultOf(d1, OSError)
        self.assertEqual(self.successResultOf(work.run("k", lambda: succeed(3))), 3)
