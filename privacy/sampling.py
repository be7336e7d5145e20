"""Cohort sampling whose accounting we can state.

Flower's ``sample_nodes`` draws a fixed-size ``random.sample`` (neither Poisson nor secure). DP-FedAvg's
amplification-by-sampling analysis (Opacus's accountants) needs each user to join each round independently
with probability q: :func:`poisson_cohort`. :func:`fixed_cohort` draws exactly m without replacement and is
accounted as such (privacy.accounting.FixedSizeRDPAccountant). :class:`PoissonSelection` is user-level DP's
training selection, composed into any strategy by privacy/dp_fedavg.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from strategies.selection import Drawn, available, seeded

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


class PoissonSelection:
    """User-level DP's training cohorts (strategies/selection.py:Selection): the whole population sampled at q
    (``poisson``) or exactly m (``fixed``) from the DP generator, one accountant step per draw, then thinned by
    the strategy's own online/memory filter (a data-independent thinning: accounting at q stays an upper
    bound). No more cohorts once the budget would be exceeded (``exhausted``)."""

    def __init__(self, devices, seed: int, sampling: str, plan, budget, source) -> None:
        self.devices, self.seed, self.sampling = devices, seed, sampling
        self.plan, self.budget, self.source = plan, budget, source
        self.sent = 0  # the last cohort's size (client-side noise shares)
        self.exhausted = False

    def draw(self, server_round: int, size: int, purpose: str, attempt: int, connected, fits):
        if not self.budget.allows_another_round():
            self.exhausted = True
            return Drawn([])
        self.exhausted = False
        if self.sampling == "poisson":
            sampled = poisson_cohort(self.devices, self.plan.sample_rate, self.source)
        else:
            sampled = fixed_cohort(self.devices, self.plan.expected_cohort, self.source)
        self.budget.step()  # the sampling happened: this round counts whatever replies
        online = np.random.default_rng(seeded(self.seed, server_round, "online"))
        drawn = available(sampled, online, connected, fits)
        self.sent = len(drawn.cohort)
        return drawn
