"""Privacy accounting for user-level DP-FedAvg: one accountant step per round, epsilon for the run's delta.

* Poisson sampling (rate q = expected cohort / population): Opacus's ``RDPAccountant`` or ``PRVAccountant``,
  exactly DP-SGD's accounting with "examples" = users and "steps" = rounds (add/remove-one adjacency).
* Fixed-size cohorts (m of N without replacement): Opacus has no analysis for it, so
  :class:`FixedSizeRDPAccountant` (an Opacus ``IAccountant``, same history/state_dict) asks Google's
  ``dp_accounting`` RDP accountant for ``SampledWithoutReplacementDpEvent`` (Wang, Balle, Kasiviswanathan 2019),
  which needs replace-one adjacency; the clipped sum's sensitivity is then 2C, so its noise multiplier is sigma/2.

``sigma`` is calibrated before training from ``target_epsilon`` with Opacus's ``get_noise_multiplier`` (which
never overshoots the target).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from opacus.accountants import IAccountant, PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

MAX_SIGMA = 1e4


class FixedSizeRDPAccountant(IAccountant):
    """Fixed-size sampling without replacement (replace-one adjacency), composed by ``dp_accounting``'s RDP."""

    ORDERS = [1.5, 1.75, *range(2, 65), 80, 96, 128, 256]  # integer orders: the without-replacement bound is exact there

    def __init__(self, population: int):
        super().__init__()
        self.population = int(population)

    def step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            sigma, q, steps = self.history.pop()
            self.history.append((sigma, q, steps + 1))
        else:
            self.history.append((noise_multiplier, sample_rate, 1))

    def get_epsilon(self, delta: float, **kwargs) -> float:
        import dp_accounting
        from dp_accounting.rdp import RdpAccountant

        if not self.history:
            return 0.0
        accountant = RdpAccountant(orders=self.ORDERS,
                                   neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
        for sigma, q, steps in self.history:
            if sigma <= 0:
                return math.inf
            m = round(q * self.population)
            # replace-one: one user's clipped update swapped for another's moves the sum by up to 2C
            event = dp_accounting.SampledWithoutReplacementDpEvent(
                self.population, m, dp_accounting.GaussianDpEvent(sigma / 2.0)
            )
            accountant.compose(event, steps)
        return float(accountant.get_epsilon(delta))

    def __len__(self) -> int:
        return len(self.history)

    @classmethod
    def mechanism(cls) -> str:
        return "rdp_fixed_size"


def make_accountant(kind: str, sampling: str, population: int) -> IAccountant:
    if sampling == "fixed":
        return FixedSizeRDPAccountant(population)
    return {"rdp": RDPAccountant, "prv": PRVAccountant}[kind]()


@lru_cache(maxsize=256)  # a pure function of its arguments; config checks ask it often
def epsilon_for(kind: str, sampling: str, population: int, sigma: float, q: float, steps: int, delta: float) -> float:
    """Epsilon after ``steps`` rounds at (sigma, q): what the accountant will report at the end."""
    if steps <= 0:
        return 0.0
    if sigma <= 0:
        return math.inf
    acc = make_accountant(kind, sampling, population)
    acc.history = [(sigma, q, steps)]
    return float(acc.get_epsilon(delta=delta))


@lru_cache(maxsize=64)  # validation and the strategy ask for the same plan
def calibrate_sigma(
    target_epsilon: float, delta: float, q: float, steps: int, kind: str, sampling: str, population: int
) -> float:
    """The noise multiplier that spends at most ``target_epsilon`` in ``steps`` rounds.

    Poisson: Opacus's ``get_noise_multiplier``. Fixed-size: the same bisection over our accountant.
    Raises ValueError when no sigma up to ``MAX_SIGMA`` reaches the target.
    """
    if sampling != "fixed":
        return float(get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=q, steps=steps, accountant=kind
        ))
    low, high = 0.0, 1.0
    while epsilon_for(kind, sampling, population, high, q, steps, delta) > target_epsilon:
        low, high = high, 2 * high
        if high > MAX_SIGMA:
            raise ValueError("The privacy budget is too low.")
    while high - low > 2e-3 * high:
        mid = (low + high) / 2
        if epsilon_for(kind, sampling, population, mid, q, steps, delta) <= target_epsilon:
            high = mid
        else:
            low = mid
    return high


@dataclass
class PrivacyBudget:
    """The run's user-level accountant: one step per round; stops before the budget would be exceeded."""

    accountant: IAccountant
    sigma: float
    sample_rate: float
    delta: float
    budget_epsilon: float | None  # None: no stop (fixed sigma without a target)

    @property
    def rounds_spent(self) -> int:
        return sum(steps for _, _, steps in self.accountant.history)

    def epsilon(self) -> float:
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.delta))

    def epsilon_if_one_more(self) -> float:
        probe = type(self.accountant).__new__(type(self.accountant))
        probe.__dict__.update({k: v for k, v in self.accountant.__dict__.items() if k != "history"})
        probe.history = list(self.accountant.history)
        probe.step(noise_multiplier=self.sigma, sample_rate=self.sample_rate)
        return float(probe.get_epsilon(delta=self.delta))

    def allows_another_round(self) -> bool:
        if self.budget_epsilon is None:
            return True
        return self.epsilon_if_one_more() <= self.budget_epsilon * (1 + 1e-9)

    def step(self) -> None:
        self.accountant.step(noise_multiplier=self.sigma, sample_rate=self.sample_rate)

    def get_state(self) -> dict:
        return {
            "accountant": {"history": [list(h) for h in self.accountant.history],
                           "mechanism": self.accountant.mechanism()},
            "sigma": self.sigma, "sample_rate": self.sample_rate, "delta": self.delta,
            "budget_epsilon": self.budget_epsilon,
        }

    def set_state(self, state: dict) -> None:
        """Resume: the spent budget comes back; a changed sigma/q/delta is refused (it would mix two runs)."""
        for key in ("sigma", "sample_rate", "delta"):
            if not math.isclose(state[key], getattr(self, key), rel_tol=1e-12):
                raise ValueError(f"privacy state: {key} was {state[key]}, this run has {getattr(self, key)}")
        acc = state["accountant"]
        if acc["mechanism"] != self.accountant.mechanism():
            raise ValueError(f"privacy state: accountant {acc['mechanism']}, this run uses {self.accountant.mechanism()}")
        self.accountant.load_state_dict({"history": [tuple(h) for h in acc["history"]], "mechanism": acc["mechanism"]})
