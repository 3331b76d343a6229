"""
Configuration reload on SIGHUP.

The file is read and validated again; if it is invalid, the running config
stays and one log line says why.  Settings that cannot change under a
running server (where it listens, where it stores, which protocols are
mounted where, the size of the disk pool) keep their running values and the
log says they need a restart; everything else takes effect at once, for new
requests, without dropping a connection or an upload.
"""

from __future__ import annotations

import signal
from dataclasses import asdict, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence

from twisted.logger import Logger

from chunkd import lazytls
from chunkd.config import Config, ConfigError, loadConfig

#: dotted keys whose change needs a restart
RESTART_KEYS = (
    "listen", "storage.directory", "storage.durable", "disk.threads",
    "tus.enabled", "tus.path", "resumable.enabled", "resumable.path", "flow.enabled", "flow.path",
    "uploads.enabled", "uploads.path", "metrics.enabled", "metrics.path",
    "ui.enabled", "ui.path",
)


def flatten(value: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(value, dict):
        out: Dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def _withRunning(new: Config, running: Config, keys: List[str]) -> Config:
    """C{new}, with the running values for C{keys}."""
    for key in keys:
        section, _, name = key.partition(".")
        if not name:
            new = replace(new, **{section: getattr(running, section)})
        else:
            part = replace(getattr(new, section), **{name: getattr(getattr(running, section), name)})
            new = replace(new, **{section: part})
    return new


class Reconfigurable(Protocol):
    """
    Anything whose settings a reload may change: the one way a new config
    is applied.  Each target decides what changes at once (for the next
    request) and keeps what cannot change while it runs.
    """

    def reconfigure(self, config: Config) -> None:
        ...


class Reloader:
    """
    Re-reads the config file and hands the new config to every target's
    C{reconfigure}, in order.
    """

    log = Logger()

    def __init__(
        self,
        path: Optional[str],
        overrides: Mapping[str, object],
        running: Config,
        targets: Sequence[Reconfigurable],
    ) -> None:
        self.path = path
        self.overrides = dict(overrides)
        self.running = running
        self.targets = list(targets)

    def reload(self) -> bool:
        """
        @return: whether a new config took effect.
        """
        try:
            new = loadConfig(self.path, self.overrides)
        except ConfigError as e:
            self.log.error("config reload refused, the running config stays: {error}", error=str(e))
            return False
        old = flatten(asdict(self.running))
        changed = sorted(k for k, v in flatten(asdict(new)).items() if old.get(k) != v)
        needRestart = [k for k in changed if k in RESTART_KEYS or k.startswith("listen")]
        if "hooks.endpoints" in changed and not lazytls.available() and lazytls.hookReasons(new):
            # The running webhooks stay: an https one cannot be sent by a
            # process that started without TLS (chunkd/lazytls.py).
            self.log.warn("config: https webhooks need TLS, which this chunkd started without "
                          "(nothing in its config needed it); hooks.endpoints takes effect after a restart")
            needRestart.append("hooks.endpoints")
        if needRestart:
            self.log.warn("config: {keys} changed; that takes effect after a restart",
                          keys=", ".join(needRestart))
            new = _withRunning(new, self.running, needRestart)
        applied = [k for k in changed if k not in needRestart]
        for target in self.targets:
            target.reconfigure(new)
        self.running = new
        self.log.info("config reloaded; changed: {keys}", keys=", ".join(applied) or "nothing")
        return True

    def installSignalHandler(self, reactor: Any, run: Optional[Callable[[], Any]] = None) -> None:
        """
        Reload on SIGHUP, on the reactor thread (the handler itself only
        schedules the work).  C{run} wraps the reload (to tell systemd).
        """
        action = run or self.reload
        signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(action))
