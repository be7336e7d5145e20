"""FedSpine's within-round pruning schedule: the level each local iteration trains at.

One function for both sides: the device prunes by it (client/trainers/fedspine_prune.py) and the server prices
the round by it (fleet/cost_model.py), so the simulated clock needs nothing the device measured.
"""

from __future__ import annotations


def step_levels(start: float, target: float, steps: int, prune_every: int, step_size: float) -> list[float]:
    """The pruning level of iterations 1..steps: from ``start``, raised by ``step_size`` after every
    ``prune_every``-th iteration (never after the last one) until ``target``."""
    level, target, levels = start, max(target, start), []
    for step in range(1, steps + 1):
        levels.append(level)
        if step % prune_every == 0 and step < steps and level < target - 1e-9:
            level = min(target, level + step_size)
    return levels


def segments(levels: list[float]) -> list[tuple[int, float]]:
    """Runs of equal level: [(iterations, level), ...] in order."""
    out: list[tuple[int, float]] = []
    for level in levels:
        if out and out[-1][1] == level:
            out[-1] = (out[-1][0] + 1, level)
        else:
            out.append((1, level))
    return out
