"""
One result, many waiters.

Several requests often wait for one piece of work: the chunks of a file that
arrive together wait for the one creation of its upload, every request that
notices an upload is finished waits for its one publication, a body's route
waits for the sink that wrote it.  A Deferred has one chain, so handing the
same Deferred to several waiters lets one consume (or alter) the result of
another.  L{OneShotResult} gives each waiter a Deferred of its own, after
Tahoe-LAFS's C{OneShotObserverList}; L{SharedWork} keeps one such piece of
work per key while it runs.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Generic, List, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")

_UNFIRED = object()


class OneShotResult(Generic[T]):
    """
    A result that arrives once and is handed to every waiter, each through
    a Deferred of its own (a waiter's callbacks never see another's).
    """

    def __init__(self) -> None:
        self._result: Any = _UNFIRED
        self._waiters: List[Deferred[T]] = []

    @classmethod
    def of(cls, work: "Deferred[T]") -> "OneShotResult[T]":
        """
        The result C{work} fires with (a value or a failure).  C{work}'s
        own chain ends here: its failure is handed on, not left unhandled.
        """
        shared: OneShotResult[T] = cls()
        work.addBoth(shared.fire)
        return shared

    @property
    def fired(self) -> bool:
        return self._result is not _UNFIRED

    def fire(self, result: Any) -> None:
        """
        Settle with C{result} (a value, or a L{Failure}); later calls are
        ignored, so racing finishers need no guard of their own.
        """
        if self.fired:
            return
        self._result = result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._hand(d)

    def whenFired(self) -> "Deferred[T]":
        """
        A new Deferred that fires with the result (at once if it is known).
        """
        d: Deferred[T] = Deferred()
        if self.fired:
            self._hand(d)
        else:
            self._waiters.append(d)
        return d

    def _hand(self, d: "Deferred[T]") -> None:
        if isinstance(self._result, Failure):
            d.errback(self._result)
        else:
            d.callback(self._result)


class SharedWork(Generic[T]):
    """
    At most one piece of work per key at a time: whoever asks while it runs
    waits for the same result; once it is over the next ask starts afresh.
    """

    def __init__(self) -> None:
        self._running: Dict[str, OneShotResult[T]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._running

    def run(self, key: str, start: Callable[[], "Deferred[T]"]) -> "Deferred[T]":
        """
        Wait for the work running for C{key}, or C{start} it.
        """
        shared = self._running.get(key)
        if shared is None:
            shared = self._running[key] = OneShotResult()
            work = start()
            # Forget it before the waiters run, so one of them that asks
            # again starts a new piece of work rather than reading this one.
            work.addBoth(self._over, key, shared)
        return shared.whenFired()

    def _over(self, result: Any, key: str, shared: "OneShotResult[T]") -> None:
        if self._running.get(key) is shared:
            del self._running[key]
        shared.fire(result)

