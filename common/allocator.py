"""glibc allocator setting for long-lived services that move megabyte buffers.

glibc raises its mmap threshold each time a large mmapped block is freed, so after
the first few batches every 1-4 MiB frame comes from the heap arenas instead,
whose freed memory is rarely returned: a soak of 50 migrations grew the sender
from 117 to 174 MiB RSS. A fixed threshold keeps large buffers on mmap, returned
to the system when freed (same soak: 60.8 -> 61.6 MiB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 1024

log = logging.getLogger("livemig.allocator")


def fix_mmap_threshold() -> bool:
    """Returns False where the C library has no mallopt (not glibc)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not ok:
        log.warning("mallopt(M_MMAP_THRESHOLD) refused; memory may grow with long uptimes")
    return ok
