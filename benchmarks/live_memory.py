"""Peak live bytes of a step on the CPU, from torch's own allocation records (``torch.profiler``).

The profiler with ``profile_memory=True`` records every allocation and free torch's CPU allocator makes (size and
time); their running sum over the profiled call is the bytes torch holds live, and its maximum is the step's peak
-- the quantity ``fleet.cost_model.training_memory`` counts with ``allocator_fraction=0``. Unlike the resident set
(benchmarks/peak_memory.py) it excludes glibc's heap (freed blocks malloc keeps, HOST_ALLOCATOR_FRACTION) and
counts only what is allocated inside the profiled call: tensors alive before it (the weights, LoRA factors,
AdamW's moments after a first step) are added by the caller from their sizes.

    python -m benchmarks.live_memory '<json spec>'   # one point in this process; prints a JSON line
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable


def peak_live_bytes(fn: Callable[[], object]) -> tuple[int, int]:
    """(peak, net) bytes allocated by torch on the CPU while ``fn()`` runs, relative to its start."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak, live


def tensor_bytes(tensors) -> int:
    """Bytes of distinct tensor storages (shared ones once)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total
