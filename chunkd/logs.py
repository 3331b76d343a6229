"""
The log level from the config, applied to every log observer twistd set up,
and changeable on reload.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LimitedHistoryLogObserver,
    LogLevelFilterPredicate,
    Logger,
    globalLogPublisher,
)

_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}


class LogLevelControl:
    """
    Wraps the observers on the global publisher in one level filter.
    twistd sets its observers up after C{makeService}, so L{install} runs
    when the services start.  Twisted has no public way to list a
    publisher's observers; if the private list is gone, the level is left
    as it is and a warning says so.
    """

    log = Logger()

    def __init__(self, level: str) -> None:
        self.predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[level])
        self.installed = False

    def install(self) -> None:
        observers = getattr(globalLogPublisher, "_observers", None)
        if not isinstance(observers, list):
            self.log.warn("this Twisted does not let chunkd filter log levels; log_level is ignored")
            return
        for observer in list(observers):
            if isinstance(observer, (FilteringLogObserver, LimitedHistoryLogObserver)):
                continue  # already filtered, or the start-up buffer
            globalLogPublisher.removeObserver(observer)
            globalLogPublisher.addObserver(FilteringLogObserver(observer, [self.predicate]))
        self.installed = True

    def setLevel(self, level: str) -> None:
        self.predicate.setLogLevelForNamespace("", _LEVELS[level])

    def reconfigure(self, config: Any) -> None:
        """A reloaded C{log_level} applies at once."""
        self.setLevel(config.log_level)
