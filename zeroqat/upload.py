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
