"""The Gaussian mechanism of user-level DP-FedAvg over any update given as a dict of arrays.

Every client's *whole* update (all tensors together, whatever their shapes: LoRA factors of any rank, zero-padded
heterogeneous ranks, forward-only deltas) is clipped to L2 norm C; the sum gets N(0, (sigma C)^2) per
coordinate; the result is divided by a fixed denominator (the expected cohort q N), never by the number of
replies and never weighted by example counts: that keeps one user's influence on the sum at most C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Delta = dict[str, np.ndarray]


def l2_norm(delta: Delta) -> float:
    return math.sqrt(sum(float(np.sum(np.square(np.asarray(v, dtype=np.float64)))) for v in delta.values()))


def clip_update(delta: Delta, clip_norm: float) -> tuple[Delta, float]:
    """Scale the whole update by min(1, C / ||delta||); returns (clipped, original norm). Float64 out."""
    norm = l2_norm(delta)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: np.asarray(v, dtype=np.float64) * scale for k, v in delta.items()}, norm


def add_gaussian(delta: Delta, std: float, source) -> Delta:
    """delta + N(0, std^2) on every coordinate (float64)."""
    if std == 0:
        return {k: np.asarray(v, dtype=np.float64) for k, v in delta.items()}
    return {k: np.asarray(v, dtype=np.float64) + source.normal(np.shape(v), std) for k, v in delta.items()}


@dataclass
class MechanismReport:
    """Diagnostics of one release (kept on the server, not published: norms depend on client data)."""

    contributions: int
    clipped: int
    noise_std_sum: float


def dp_mean(
    deltas: list[Delta],
    template: Delta,
    clip_norm: float,
    noise_multiplier: float,
    denominator: float,
    source,
    *,
    pre_noised: int = 0,
    noised_share_each: float = 0.0,
) -> tuple[Delta, MechanismReport]:
    """(sum_i clip(delta_i) + N(0, (sigma C)^2)) / denominator, shaped like ``template``.

    ``pre_noised``/``noised_share_each`` (client-side placement): the deltas are already clipped by clients who
    each added noise of variance ``noised_share_each * (sigma C)^2``; the server adds only what is missing so
    that the sum's noise variance is exactly (sigma C)^2 (dropped clients' shares are topped up here).
    Works with no deltas at all: the release is then noise only (skipping it would leak that nobody came).
    """
    if denominator <= 0:
        raise ValueError("the DP-FedAvg denominator (expected cohort) must be > 0")
    total = {k: np.zeros(np.shape(v), dtype=np.float64) for k, v in template.items()}
    clipped = 0
    for delta in deltas:
        if delta.keys() != template.keys() or any(np.shape(delta[k]) != np.shape(template[k]) for k in template):
            raise ValueError("an update does not match the global adapter's keys and shapes")
        if pre_noised:
            contribution = {k: np.asarray(v, dtype=np.float64) for k, v in delta.items()}
        else:
            contribution, norm = clip_update(delta, clip_norm)
            clipped += norm > clip_norm
        for k in total:
            total[k] += contribution[k]
    std_sum = noise_multiplier * clip_norm
    missing_share = max(0.0, 1.0 - len(deltas) * noised_share_each) if pre_noised else 1.0
    noisy = add_gaussian(total, std_sum * math.sqrt(missing_share), source)
    mean = {k: (v / denominator).astype(np.float32) for k, v in noisy.items()}
    return mean, MechanismReport(len(deltas), clipped, std_sum)


def privatize_on_client(delta: Delta, clip_norm: float, noise_std: float, source) -> Delta:
    """Client-side placement: clip the whole update, then add this client's share of the noise."""
    clipped, _ = clip_update(delta, clip_norm)
    return {k: v.astype(np.float32) for k, v in add_gaussian(clipped, noise_std, source).items()}
