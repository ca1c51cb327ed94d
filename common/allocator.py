"""Give freed memory back to the system after each migration (glibc).

A migration allocates and frees megabyte frames and read buffers from many
threads. glibc keeps freed heap memory in its arenas, so a long-lived sender's
RSS crept up migration after migration (a soak of 50 grew it from 117 to 174
MiB). Forcing large blocks onto mmap cured that but halved throughput (a page
fault per 4 KiB of every fresh buffer: 508 -> 254 MiB/s measured side by side);
trimming the arenas once a migration has ended costs nothing on the data path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    return trim


def release_free_memory() -> bool:
    """malloc_trim(0): returns False where the C library has none."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_arenas(count: int = 2) -> bool:
    """mallopt(M_ARENA_MAX, count): threads share `count` heaps instead of one each.

    A long-lived worker process (a pooled connection process) runs new gRPC and
    stream threads for every migration; with an arena per thread its heap grew by
    ~25 MiB over 60 migrations before it levelled off. False where the C library
    has no mallopt."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_ARENA_MAX, count))
