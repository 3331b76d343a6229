"""
TLS support (pyOpenSSL and cryptography) loaded only when the configuration
needs it.

Twisted imports pyOpenSSL whenever it is installed -- C{twisted.internet.tcp}
for startTLS, C{twisted.internet.endpoints} for C{ssl:} and C{tls:} -- and
with it cryptography's Rust extension: about 11 MB of a 60 MB daemon that,
on the embedded default, listens on plain TCP on loopback and sends no
webhooks (bench/README.md, issue 14's idle-memory target).  Twisted decides
"TLS or not" once, when those modules are first imported, so the decision is
made here, before they are, from the configuration: if nothing in it needs
TLS, importing C{OpenSSL} is refused for the life of the process and Twisted
takes the path it takes on a machine without pyOpenSSL.

What needs TLS: any listener but a plain C{tcp:}, C{tcp6:}, C{unix:} or
C{systemd:} one (C{ssl:}, C{tls:}, a wrapper such as C{haproxy:ssl:...}), or
an https webhook.  A
config reload cannot bring TLS into a process started without it; the
reloader keeps the running webhooks and says a restart is needed
(L{chunkd.reload}).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import re
import sys
from typing import List, Optional, Sequence

from chunkd.config import Config

#: listener types known to need no TLS; any other (ssl:, tls:, a wrapper
#: such as haproxy:ssl:..., a plugin's) keeps TLS available
_PLAIN_ENDPOINTS = ("tcp", "tcp6", "unix", "systemd")

#: Twisted modules that decide, when first imported, whether TLS exists
_DECIDERS = ("twisted.internet.tcp", "twisted.internet.endpoints", "twisted.protocols.tls")


def endpointType(endpoint: str) -> str:
    """
    The type of a Twisted endpoint string: what comes before its first
    unescaped colon, unescaped and lower-cased (Twisted escapes with a
    backslash: C{ss\\l:} is C{ssl:}).
    """
    kind = re.split(r"(?<!\\):", endpoint, maxsplit=1)[0]
    return kind.replace("\\", "").strip().lower()


def listenerReasons(config: Config) -> List[str]:
    """The listeners that may need TLS: every one not known to be plain."""
    return [f"listen: {endpointType(e)}:" for e in config.listen if endpointType(e) not in _PLAIN_ENDPOINTS]


def hookReasons(config: Config) -> List[str]:
    """The webhooks that need TLS: https ones."""
    return [f"hooks.endpoints[{i}].url (https)" for i, hook in enumerate(config.hooks.endpoints)
            if hook.url.lower().startswith("https:")]


def reasons(config: Config) -> List[str]:
    """
    What in C{config} may need TLS, as the config keys a sysadmin would
    look for (empty: nothing does).
    """
    return listenerReasons(config) + hookReasons(config)


class _RefuseOpenSSL(importlib.abc.MetaPathFinder):
    """
    Makes C{import OpenSSL} fail as if pyOpenSSL were not installed, with a
    message that says why.
    """

    def find_spec(self, name: str, path: Optional[Sequence[str]] = None,
                  target: object = None) -> Optional[importlib.machinery.ModuleSpec]:
        if name == "OpenSSL" or name.startswith("OpenSSL."):
            raise ModuleNotFoundError(
                "chunkd started without TLS: nothing in its configuration needed it",
                name=name)
        return None


_refused = False


def withoutTLSUnlessNeeded(config: Config) -> bool:
    """
    Refuse pyOpenSSL for the rest of this process if C{config} needs no TLS
    and Twisted has not already decided (as in a test runner, which imported
    the reactor before chunkd).

    @return: whether TLS was refused.
    """
    global _refused
    if _refused:
        return True
    if reasons(config) or "OpenSSL" in sys.modules or any(m in sys.modules for m in _DECIDERS):
        return False
    sys.meta_path.insert(0, _RefuseOpenSSL())
    _refused = True
    return True


def available() -> bool:
    """Whether this process can use TLS (it was not refused at start-up)."""
    return not _refused
