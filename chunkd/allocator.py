"""
glibc's allocator, tuned for how chunkd uses memory: buffers of socket
reads taken and freed all the time while bodies stream, nothing much
between uploads.

While bodies stream, freed memory is kept (L{tune}): with glibc's dynamic
defaults, the heap would be handed back to the kernel after every socket
read and taken again at the next, about a quarter of chunkd's kernel time
per GiB received (bench/README.md).  Once the last body has ended, what
the streaming left free is handed back in one go (L{giveBack}), so an idle
daemon is as small after uploads as before them (issue 14: idle RSS 53 ->
48 MB after a 64 MiB upload).  Elsewhere than glibc, both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any, Optional

#: mallopt parameters, from <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _libc() -> Optional[Any]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    return libc


_glibc = _libc()


def tune() -> bool:
    """
    Keep freed memory for the next reads while bodies stream.

    @return: whether glibc took both settings.
    """
    if _glibc is None:
        return False
    return bool(_glibc.mallopt(_M_TRIM_THRESHOLD, 64 * 1024 * 1024)
                and _glibc.mallopt(_M_MMAP_THRESHOLD, 4 * 1024 * 1024))


def giveBack() -> bool:
    """
    Hand the memory left free back to the kernel (C{malloc_trim}).  It walks
    the heap: call it in the disk pool, and only when no body streams.

    @return: whether any memory was handed back.
    """
    if _glibc is None:
        return False
    return bool(_glibc.malloc_trim(0))
