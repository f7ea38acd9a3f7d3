"""Keep a long-running server's memory from creeping: glibc's allocator, tuned for many threads.

A server that streams for days allocates and frees large buffers in many threads
(video codecs, frames, the inference thread, the executor). glibc keeps a heap arena
per thread (up to 8 per core) and raises its mmap threshold each time a large block
is freed, after which such blocks come from those heaps and their free space is
rarely returned: resident memory creeps up with every session that comes and goes.
:func:`tune` caps the arenas and fixes the mmap threshold (large blocks are mapped
and unmapped, returned at once); :func:`trim` gives free heap pages back. Elsewhere
than glibc both do nothing and say so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt() parameters, from glibc's malloc.h
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value; fixed, it stops growing with every large free


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune() -> str:
    """Cap the heap arenas and fix the mmap threshold; what was done, for the log."""
    libc = _libc()
    if libc is None:
        return "the C library is not glibc: its allocator is left as it is"
    ok = libc.mallopt(M_ARENA_MAX, ARENAS) == 1 and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    if not ok:
        return "glibc refused the allocator settings: left as they are"
    return f"glibc allocator: {ARENAS} arenas, blocks over {MMAP_THRESHOLD // 1024} KiB mapped (returned when freed)"


def trim() -> bool:
    """Return free heap memory to the system (``malloc_trim(0)``); blocking, a few ms: off the event loop."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
