"""Aggregation rules over adapter deltas (pure numpy, testable alone)."""

from __future__ import annotations

import numpy as np


def weighted_mean(deltas: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    """Example-weighted FedAvg of deltas that share keys and shapes: sum_k w_k * d_k / sum_k w_k."""
    if not deltas:
        raise ValueError("nothing to aggregate")
    if len(deltas) != len(weights):
        raise ValueError("one weight per delta")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    keys = deltas[0].keys()
    for d in deltas[1:]:
        if d.keys() != keys:
            raise ValueError("deltas have different keys")
    return {
        k: sum(np.asarray(d[k], dtype=np.float64) * (w / total) for d, w in zip(deltas, weights)).astype(np.float32)
        for k in keys
    }


def apply_delta(weights: dict[str, np.ndarray], delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: (weights[k] + delta[k]).astype(np.float32) for k in weights}
