"""Keep the C allocator from returning big freed blocks to the OS after every training step.

Training on CPU allocates and frees activation tensors of 30-150 MB per step. glibc serves
blocks that large with mmap and unmaps them on free, so every step pays page faults and
zeroing for all of them (measured here: half of a step's time, mostly in the kernel). Raising
the mmap and trim thresholds keeps them in the heap for reuse. No effect off glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

LOG = logging.getLogger("densernet")
# mallopt parameter numbers from glibc's malloc.h.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 1 << 30  # serve allocations up to 1 GiB from the heap
TRIM_THRESHOLD = 1 << 34  # return free heap to the OS only beyond 16 GiB
TOP_PAD = 1 << 28  # grow the heap in 256 MiB steps


def keep_freed_memory() -> bool:
    """Returns True when glibc accepted the settings."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = all(libc.mallopt(p, v) == 1 for p, v in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                       (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    except (OSError, AttributeError):
        return False
    LOG.debug("allocator thresholds %s", "raised" if ok else "not accepted")
    return ok
