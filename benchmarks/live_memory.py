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


def _measure_here(spec: dict) -> dict:
    """Build the spec's model (benchmarks/peak_memory.py's builder: the trainers' own loop bodies) and run its
    steps, each under the profiler: live = what the build leaves allocated + the steps' peak above it."""
    import gc
    import warnings

    import torch

    from benchmarks.peak_memory import _runner

    warnings.filterwarnings("ignore")
    torch.set_num_threads(spec.get("threads", 2))
    box = {}

    def build():
        box["steps"] = _runner(spec)
        gc.collect()

    _, built = peak_live_bytes(build)
    gc.collect()
    step_peak, _ = peak_live_bytes(box["steps"])
    return {"live_bytes": built + step_peak, "built_bytes": built, "step_peak_bytes": step_peak}


def measure(spec: dict, timeout: float = 900) -> dict:
    """Run ``spec`` in a fresh interpreter (this repository on its path) and return its measurement."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "benchmarks.live_memory", json.dumps(spec)], cwd=root,
                         capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(root)})
    if out.returncode != 0:
        raise RuntimeError(f"live_memory subprocess failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(_measure_here(json.loads(sys.argv[1]))))
