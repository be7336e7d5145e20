"""Cohort sampling whose accounting we can state.

Flower's ``sample_nodes`` draws a fixed-size ``random.sample`` (neither Poisson nor secure). DP-FedAvg's
amplification-by-sampling analysis (Opacus's accountants) needs each user to join each round independently
with probability q: :func:`poisson_cohort`. :func:`fixed_cohort` draws exactly m without replacement and is
accounted as such (privacy.accounting.FixedSizeRDPAccountant).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def poisson_cohort(population: Sequence[T], q: float, source) -> list[T]:
    """Each member independently with probability q (uniforms from the noise source's generator)."""
    if not 0 <= q <= 1:
        raise ValueError(f"sampling rate must be in [0, 1], got {q}")
    u = source.uniform(len(population))
    return [member for member, x in zip(population, u) if x < q]


def fixed_cohort(population: Sequence[T], m: int, source) -> list[T]:
    """Exactly m members, uniformly without replacement (random keys: the m smallest uniforms)."""
    if m > len(population):
        raise ValueError(f"cohort of {m} is larger than the population ({len(population)})")
    order = np.argsort(source.uniform(len(population)), kind="stable")[:m]
    return [population[i] for i in sorted(order)]
