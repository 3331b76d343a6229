"""
Interim (1xx) responses.  Twisted writes no 1xx response but its own
C{100 Continue}, so this writes them on the connection itself: a status
line, header lines and an empty line, before the final response.

Only on HTTP/1.1 (an HTTP/1.0 client cannot parse an interim response),
only while the final response has not begun, and only for the request the
connection is reading now.  A client that does not ask for them ignores
1xx responses (RFC 9110 15.2: it must parse and skip them), so sending
them never breaks one.  Twisted still sends C{100 Continue} when a request
asks for it; an interim response does not replace it.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Tuple

#: a header name (RFC 9110 token) and a value with no line breaks
_NAME = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_VALUE = re.compile(rb"^[\t\x20-\x7e\x80-\xff]*\Z")


def sendInformational(request: Any, code: int, reason: str,
                      headers: Iterable[Tuple[str, str]]) -> bool:
    """
    Write an interim response for C{request} now.

    @param code: a 1xx status other than 100 and 101 (which Twisted owns).
    @return: whether it was written (C{False} for an HTTP/1.0 client, a
        response already under way, or a connection gone).
    @raise ValueError: a header that would break the framing.
    """
    if not 102 <= code <= 199:
        raise ValueError(f"{code} is not an interim status chunkd may send")
    transport = getattr(request.channel, "transport", None) if request.channel is not None else None
    if transport is None or request.clientproto != b"HTTP/1.1" or request.startedWriting or request.finished:
        return False
    lines = [b"HTTP/1.1 %d %s\r\n" % (code, reason.encode("ascii"))]
    for name, value in headers:
        rawName, rawValue = name.encode("ascii"), value.encode("latin-1")
        if not _NAME.match(rawName) or not _VALUE.match(rawValue):
            raise ValueError(f"header {name!r} cannot go into an interim response")
        lines.append(rawName + b": " + rawValue + b"\r\n")
    lines.append(b"\r\n")
    transport.write(b"".join(lines))
    return True
