"""Keep freed activation memory in the process instead of handing it back to the OS after every operation.

A simulated device's training step on a CPU allocates and frees many tensors of a few MB (activations,
gradients, casts). glibc's malloc hands much of that memory back to the OS as it is freed (``munmap`` of
blocks above its mmap threshold, trimming of free space at the heap's top beyond its trim threshold), so
later steps page-fault it in again: about 8% of a round on this project's 2-core VM (the `reuse_memory` step
of docs/benchmarks/throughput.md). ``simulation.reuse_freed_memory=true`` raises the mmap threshold to glibc's
maximum and stops trimming the heap, so freed blocks are reused. The cost: the process keeps its peak heap
(resident memory does not shrink between rounds). Results are unchanged (only where memory comes from).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit; larger values are refused
TOP_PAD = 256 * 1024 * 1024
NEVER_TRIM = 2**31 - 1  # mallopt takes an int: 2 GiB above the heap top before it is trimmed

_applied = False


def reuse_freed_memory() -> bool:
    """Tune this process's glibc malloc as above (once); False where the C library is not glibc."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (M_TRIM_THRESHOLD, NEVER_TRIM), (M_TOP_PAD, TOP_PAD)))
    if not ok:
        logger.warning("mallopt refused a setting; simulation.reuse_freed_memory has no effect in this process")
    _applied = ok
    return ok
