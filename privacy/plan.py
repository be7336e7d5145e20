"""The privacy plan of a run, resolved and checked before any training.

Population N = ``fleet.size`` (one user per device). Expected cohort = ``federation.cohort_size``, so the
Poisson rate is q = cohort_size / N and the DP-FedAvg denominator is q N = cohort_size. delta defaults to
1 / N^1.1 (below 1/N, as a meaningful user-level guarantee needs). sigma is ``privacy.noise_multiplier`` or is
calibrated from ``privacy.target_epsilon`` for ``rounds`` rounds.

:func:`check_privacy` checks the settings alone (no accountant, no torch); :func:`resolve_plan` then calibrates
sigma with Opacus's accountant. The first runs in runconfig.check.validate (which imports no torch); the second
when the run is set up (simulations.run's precheck, server.run.FederatedRun.setup, the DP strategy), before any
data or model work. Allowed values (mode,
accountant, sampling, noise placement, rng) are the schema's enums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runconfig.choices import PrivacyMode
from runconfig.errors import require as _require
from runconfig.schema import Settings

if TYPE_CHECKING:
    from privacy.accounting import PrivacyBudget


@dataclass(frozen=True)
class PrivacyPlan:
    population: int
    expected_cohort: int  # the fixed denominator q N
    sample_rate: float  # q
    delta: float
    sigma: float  # 0 only for target_epsilon=inf (no noise: not private, a baseline)
    clip_norm: float
    budget_epsilon: float | None
    planned_epsilon: float  # epsilon after all `rounds` rounds at sigma

    def new_budget(self, accountant: str, sampling: str) -> PrivacyBudget:
        from privacy.accounting import PrivacyBudget, make_accountant

        budget = None if self.budget_epsilon is None or math.isinf(self.budget_epsilon) else self.budget_epsilon
        return PrivacyBudget(make_accountant(accountant, sampling, self.population), self.sigma,
                             self.sample_rate, self.delta, budget)


def _delta(s: Settings) -> float:
    n = s.fleet.size
    return s.privacy.delta if s.privacy.delta is not None else 1.0 / n**1.1


def check_privacy(s: Settings) -> None:
    """Check ``privacy`` against the fleet, without an accountant (imports no torch). Raises ConfigError."""
    p = s.privacy
    n, m = s.fleet.size, s.federation.cohort_size
    _require(m <= n, "federation.cohort_size", f"the cohort ({m}) is larger than the population ({n} users)",
             f"federation.cohort_size<={n} or a larger fleet.size")
    _require(p.clip_norm > 0, "privacy.clip_norm", f"must be > 0 (got {p.clip_norm})", "privacy.clip_norm=0.5")
    delta = _delta(s)
    _require(0 < delta < 1.0 / n, "privacy.delta",
             f"{delta:g} is not below 1/population (1/{n}): a mechanism may then publish one user's data outright",
             f"privacy.delta=null (1/N^1.1 = {1.0 / n**1.1:.3g}) or a value < {1.0 / n:.3g}")
    if p.noise_multiplier is not None:
        _require(p.noise_multiplier > 0, "privacy.noise_multiplier", f"must be > 0 (got {p.noise_multiplier})",
                 "a positive sigma, or null with privacy.target_epsilon to calibrate it")
    else:
        _require(p.target_epsilon is not None, "privacy.target_epsilon", "and privacy.noise_multiplier are both null",
                 "privacy.target_epsilon=4 (sigma is calibrated) or privacy.noise_multiplier=1.0")
    if p.target_epsilon is not None:
        _require(p.target_epsilon > 0, "privacy.target_epsilon", f"must be > 0 (got {p.target_epsilon})",
                 "e.g. privacy.target_epsilon=4")
    rec = p.record
    if rec.enabled:
        _require(rec.noise_multiplier > 0, "privacy.record.noise_multiplier", "must be > 0", "e.g. 1.0")
        _require(rec.clip_norm > 0, "privacy.record.clip_norm", "must be > 0", "e.g. 1.0")


def resolve_plan(s: Settings) -> PrivacyPlan:
    """:func:`check_privacy`, then calibrate sigma (Opacus's accountant). Raises ConfigError naming the key."""
    check_privacy(s)
    from privacy.accounting import calibrate_sigma, epsilon_for  # Opacus (and torch) only when DP is on

    p = s.privacy
    n, m = s.fleet.size, s.federation.cohort_size
    q, delta = m / n, _delta(s)
    if p.noise_multiplier is not None:
        sigma = float(p.noise_multiplier)
    elif math.isinf(p.target_epsilon):
        sigma = 0.0
    else:
        try:
            sigma = calibrate_sigma(p.target_epsilon, delta, q, s.rounds, p.accountant, p.sampling, n)
        except ValueError:
            sigma = math.inf
        _require(math.isfinite(sigma), "privacy.target_epsilon",
                 f"epsilon {p.target_epsilon:g} is unreachable in {s.rounds} rounds at q={q:.3g}, delta={delta:.3g}",
                 "a larger target_epsilon, fewer rounds, a smaller cohort or a larger population")
    planned = epsilon_for(p.accountant, p.sampling, n, sigma, q, s.rounds, delta) if sigma > 0 else math.inf
    if p.target_epsilon is not None and not math.isinf(p.target_epsilon) and sigma > 0:
        first = epsilon_for(p.accountant, p.sampling, n, sigma, q, 1, delta)
        _require(first <= p.target_epsilon, "privacy.target_epsilon",
                 f"unreachable: one round at sigma={sigma:g} already spends epsilon {first:.3g} > {p.target_epsilon:g}",
                 "a larger privacy.noise_multiplier (or null to calibrate it), or a larger target_epsilon")
    return PrivacyPlan(n, m, q, delta, sigma, float(p.clip_norm), p.target_epsilon, planned)
