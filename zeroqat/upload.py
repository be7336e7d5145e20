"""Seed-only uploads (FedKSeed-style): a ZO device sends its direction seeds and projected gradients instead
of the adapter; the server replays them on the adapter it sent, with the same RNG, and gets the same update.

On the wire: ``zo.seeds`` (int64, steps x q) and ``zo.grads`` (float32, steps x q) in the reply's ArrayRecord,
12 bytes per direction, whatever the adapter's size.
"""

from __future__ import annotations

import numpy as np
import torch

from zeroqat.spsa import replay

SEEDS, GRADS = "zo.seeds", "zo.grads"


def encode(seeds: np.ndarray, grads: np.ndarray) -> dict[str, np.ndarray]:
    return {SEEDS: np.asarray(seeds, dtype=np.int64), GRADS: np.asarray(grads, dtype=np.float32)}


def is_seed_upload(arrays: dict[str, np.ndarray]) -> bool:
    return set(arrays) == {SEEDS, GRADS}


class SeedUploadError(ValueError):
    """A seed upload the server must not replay (the validator rejects it as ``seed_upload``)."""

    reason = "seed_upload"


def check_upload(arrays: dict[str, np.ndarray], expected_seeds: np.ndarray, grad_clip: float = 0.0) -> None:
    """Everything that can be checked before a replay, in O(steps x q): exactly the seeds the server derives
    from the work's seed (so their count and values follow from the work), int64 seeds and float32 finite
    projected gradients of the same shape, within ``grad_clip`` when the device clips."""
    seeds, grads = arrays[SEEDS], arrays[GRADS]
    if seeds.dtype != np.int64 or grads.dtype != np.float32:
        raise SeedUploadError(f"dtypes {seeds.dtype}/{grads.dtype}, not int64/float32")
    if seeds.shape != expected_seeds.shape or grads.shape != expected_seeds.shape:
        raise SeedUploadError(f"shapes {seeds.shape}/{grads.shape}; the work implies {expected_seeds.shape} "
                              "(local steps x perturbations)")
    if not np.array_equal(seeds, expected_seeds):
        raise SeedUploadError("seeds differ from those the work's seed gives")
    if not np.all(np.isfinite(grads)):
        raise SeedUploadError("projected gradients hold NaN or Inf")
    if grad_clip > 0 and float(np.max(np.abs(grads), initial=0.0)) > float(np.float32(grad_clip)):
        raise SeedUploadError(f"a projected gradient exceeds zeroqat.grad_clip={grad_clip:g}")


def adapter_order(keys) -> list[str]:
    """The order in which tensors draw their z: sorted adapter keys, on the device and on the server."""
    return sorted(keys)


def replay_adapter(adapter: dict[str, np.ndarray], upload: dict[str, np.ndarray], lr: float, schedule: str
                   ) -> dict[str, np.ndarray]:
    """The adapter after the device's steps, rebuilt from the received adapter and its seed upload."""
    tensors = {k: torch.from_numpy(np.array(adapter[k], dtype=np.float32)) for k in adapter_order(adapter)}
    replay(list(tensors.values()), upload[SEEDS], upload[GRADS], lr, schedule)
    return {k: t.numpy() for k, t in tensors.items()}


def replay_delta(adapter: dict[str, np.ndarray], upload: dict[str, np.ndarray], lr: float, schedule: str
                 ) -> dict[str, np.ndarray]:
    after = replay_adapter(adapter, upload, lr, schedule)
    return {k: after[k] - np.asarray(adapter[k], dtype=np.float32) for k in adapter}
