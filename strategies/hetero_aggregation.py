"""Aggregation of LoRA deltas of different ranks trained on differently pruned sub-models.

Rule (docs/fedspine.md): every update is mapped back to full-model coordinates -- its rank ``r_k`` fills the
leading ``r_k`` rows of ``lora_A`` / columns of ``lora_B``; its kept heads/channels fill their rows (out dims)
and columns (in dims) -- and each coordinate ``c`` is averaged over the devices that hold it:

    delta[c] = sum_k w_k * h_k[c] * d_k[c] / sum_k w_k * h_k[c]      (0 where no device holds c)

with ``h_k[c]`` in {0, 1} (device k holds c) and ``w_k`` its example count. A coordinate no device trained
keeps its global value, and a device never dilutes coordinates it does not hold (zero padding would, as
plain HetLoRA-style padding-then-averaging does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pruning.structure import Dims, Structure, scatter_from


@dataclass
class SubUpdate:
    """A device's delta in its own (pruned, rank-truncated) coordinates and what is needed to place it."""

    delta: dict[str, np.ndarray]
    structure: Structure
    rank: int
    weight: float


def aggregate_hetero(updates: list[SubUpdate], full_shapes: dict[str, tuple], dims: Dims) -> dict[str, np.ndarray]:
    """The global delta in full coordinates (coordinate-wise weighted mean over holders)."""
    if not updates:
        raise ValueError("nothing to aggregate")
    num = {k: np.zeros(s, np.float64) for k, s in full_shapes.items()}
    den = {k: np.zeros(s, np.float64) for k, s in full_shapes.items()}
    for u in updates:
        if u.weight <= 0:
            raise ValueError("weights must be positive")
        values, holders = scatter_from(u.delta, u.structure, dims, u.rank, full_shapes)
        for k in full_shapes:
            num[k] += u.weight * values[k]
            den[k] += u.weight * holders[k]
    return {k: np.divide(num[k], den[k], out=np.zeros_like(num[k]), where=den[k] > 0).astype(np.float32)
            for k in full_shapes}


def coverage(updates: list[SubUpdate], full_shapes: dict[str, tuple], dims: Dims) -> float:
    """Share of the global adapter's coordinates that at least one update holds (logged per round)."""
    held = total = 0
    for k, shape in full_shapes.items():
        any_holder = np.zeros(shape, bool)
        for u in updates:
            _, h = scatter_from({k: u.delta[k]}, u.structure, dims, u.rank, {k: shape})
            any_holder |= h[k] > 0
        held += int(any_holder.sum())
        total += int(np.prod(shape))
    return held / max(total, 1)
