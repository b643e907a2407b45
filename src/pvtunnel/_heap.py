"""Heap settings for the long-running `pvtunnel` processes: glibc's, and the
garbage collector's.

A body streaming through a 2 MiB window allocates and frees 64-256 KiB buffers
all the time (socket reads, frames, WebSocket messages). glibc's defaults hand
memory back to the kernel as soon as 128 KiB lie free at the top of the heap,
and serve each block over 128 KiB with a fresh ``mmap``: either way the next
buffer lands on new pages, and every page is a fault (costly on a VM): large
copies then cost several times what they do with the settings below (figures in
the commit that added this).

The settings keep up to `TRIM_THRESHOLD_BYTES` free at the top of the heap,
which costs at most that much resident memory, and take blocks up to
`MMAP_THRESHOLD_BYTES` from the heap. Only the CLI applies them (and the freeze
below): a program that embeds pvtunnel owns its allocator and its collector.
glibc's own ``MALLOC_*_`` environment variables, when set, win.

The garbage collector's full collections look at every object the process holds,
and after start-up most of those are the imported modules, classes and functions
(some 35,000 objects), which never become garbage: at 64 concurrent requests an
agent ran a full collection every few seconds, each stopping all its requests for
10-30 ms. `freeze_start_up_objects`, called once a process is ready, moves them
out of the collector's sight, so a full collection looks only at what traffic
made since (about 1,000 objects under the same load: under a millisecond).
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
from typing import Final

# mallopt parameters (malloc.h).
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
TRIM_THRESHOLD_BYTES: Final = 8 * 1024 * 1024
MMAP_THRESHOLD_BYTES: Final = 4 * 1024 * 1024
_ENVIRONMENT: Final = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def tune_heap() -> bool:
    """Apply the settings if this is glibc and the environment sets none; True if applied."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in _ENVIRONMENT):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, ValueError, AttributeError):  # not glibc after all (musl, ...)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    )


def freeze_start_up_objects() -> None:
    """Exclude every object alive now from later collections (see the module docstring).

    A frozen object that later becomes cyclic garbage is never freed; that is at
    most the start-up heap, which stays alive in a running process anyway.
    """
    gc.collect()  # what start-up left as garbage goes first, not frozen with the rest
    gc.freeze()
