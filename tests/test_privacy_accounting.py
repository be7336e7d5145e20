"""Our epsilon is Opacus's (and agrees with Google's dp_accounting); calibration, budget and state round trip."""

import math

import dp_accounting
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from privacy.accounting import PrivacyBudget, calibrate_sigma, epsilon_for, make_accountant

pytestmark = pytest.mark.privacy

CASES = [(0.01, 1.0, 100, 1e-5), (0.1, 1.2, 30, 1e-4), (0.05, 0.8, 10, 5e-4), (0.5, 2.0, 5, 0.1)]


@pytest.mark.parametrize("q, sigma, steps, delta", CASES)
def test_epsilon_equals_opacus_own_computation(q, sigma, steps, delta):
    kinds = (("rdp", RDPAccountant), ("prv", PRVAccountant)) if steps >= 10 else (("rdp", RDPAccountant),)
    for kind, cls in kinds:
        theirs = cls()
        for _ in range(steps):
            theirs.step(noise_multiplier=sigma, sample_rate=q)
        ours = make_accountant(kind, "poisson", 1000)
        budget = PrivacyBudget(ours, sigma, q, delta, None)
        for _ in range(steps):
            budget.step()
        assert budget.epsilon() == pytest.approx(theirs.get_epsilon(delta=delta), rel=1e-9)
        assert epsilon_for(kind, "poisson", 1000, sigma, q, steps, delta) == pytest.approx(budget.epsilon(), rel=1e-9)


@pytest.mark.parametrize("q, sigma, steps, delta", CASES[:3])
def test_rdp_epsilon_agrees_with_dp_accounting(q, sigma, steps, delta):
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    google = acc.get_epsilon(delta)
    ours = epsilon_for("rdp", "poisson", 1000, sigma, q, steps, delta)
    assert ours == pytest.approx(google, rel=0.05)  # different order grids and conversions; same analysis


@pytest.mark.parametrize("kind", ["rdp"])
def test_epsilon_is_monotone_in_each_argument(kind):
    def eps(q=0.05, sigma=1.0, steps=20, delta=1e-4):
        return epsilon_for(kind, "poisson", 1000, sigma, q, steps, delta)

    assert eps(q=0.02) < eps(q=0.05) < eps(q=0.1)
    assert eps(sigma=1.5) < eps(sigma=1.0) < eps(sigma=0.8)
    assert eps(steps=5) < eps(steps=20) < eps(steps=50)
    assert eps(delta=1e-3) < eps(delta=1e-4) < eps(delta=1e-6)


def test_prv_epsilon_is_monotone_in_sigma_and_below_rdp():
    prv = [epsilon_for("prv", "poisson", 1000, s, 0.05, 20, 1e-4) for s in (0.8, 1.0, 1.5)]
    assert prv[0] > prv[1] > prv[2]
    assert prv[1] <= epsilon_for("rdp", "poisson", 1000, 1.0, 0.05, 20, 1e-4)  # PRV is the tighter bound


def test_fixed_size_accounting_is_dp_accountings_without_replacement():
    n, m, sigma, steps, delta = 1000, 50, 1.0, 10, 1e-4
    acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_accounting.SampledWithoutReplacementDpEvent(n, m, dp_accounting.GaussianDpEvent(sigma / 2)), steps)
    assert epsilon_for("rdp", "fixed", n, sigma, m / n, steps, delta) == pytest.approx(acc.get_epsilon(delta))
    # replace-one costs sensitivity 2C: fixed-size cohorts spend more than Poisson at the same rate
    assert epsilon_for("rdp", "fixed", n, sigma, m / n, steps, delta) > epsilon_for("rdp", "poisson", n, sigma, m / n, steps, delta)


@pytest.mark.parametrize("kind, sampling", [("rdp", "poisson"), ("rdp", "fixed")])
def test_calibrated_sigma_meets_target_and_is_tight(kind, sampling):
    target, delta, q, steps = 2.0, 1e-4, 0.05, 5
    sigma = calibrate_sigma(target, delta, q, steps, kind, sampling, 1000)
    assert epsilon_for(kind, sampling, 1000, sigma, q, steps, delta) <= target
    assert epsilon_for(kind, sampling, 1000, sigma * 0.97, q, steps, delta) > target * 0.98


def test_budget_stops_before_overspending_and_state_round_trips():
    budget = PrivacyBudget(make_accountant("rdp", "poisson", 100), 1.0, 0.1, 1e-3, budget_epsilon=2.0)
    rounds = 0
    while budget.allows_another_round():
        budget.step()
        rounds += 1
        assert rounds < 1000
    assert budget.epsilon() <= 2.0 < budget.epsilon_if_one_more()
    state = budget.get_state()
    resumed = PrivacyBudget(make_accountant("rdp", "poisson", 100), 1.0, 0.1, 1e-3, budget_epsilon=2.0)
    resumed.set_state(state)
    assert resumed.rounds_spent == rounds and resumed.epsilon() == budget.epsilon()
    assert not resumed.allows_another_round()  # a resumed run never forgets spent budget
    other = PrivacyBudget(make_accountant("rdp", "poisson", 100), 1.5, 0.1, 1e-3, budget_epsilon=2.0)
    with pytest.raises(ValueError, match="sigma"):
        other.set_state(state)


def test_no_noise_means_infinite_epsilon():
    assert math.isinf(epsilon_for("rdp", "poisson", 100, 0.0, 0.1, 3, 1e-3))
