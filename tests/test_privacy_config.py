"""Bad privacy configurations fail before any training with a ConfigError naming the key and the fix."""

import pytest

from privacy.plan import resolve_plan
from runconfig.load import ConfigError, compose

pytestmark = pytest.mark.privacy


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["privacy.delta=0.2"], "privacy.delta"),  # 8 users: delta must be < 1/8
        (["privacy.delta=0.125"], "not below 1/population"),
        (["privacy.noise_multiplier=0"], "privacy.noise_multiplier"),
        (["privacy.noise_multiplier=-1"], "must be > 0"),
        (["federation.cohort_size=9"], "larger than the"),
        (["privacy.target_epsilon=null"], "both null"),
        (["privacy.accountant=gdp"], "privacy.accountant"),
        (["privacy.sampling=shuffle"], "privacy.sampling"),
        (["privacy.clip_norm=0"], "privacy.clip_norm"),
    ],
)
def test_bad_privacy_config_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose(["+fleet=8dev_test", "simulation=ray", "method=dp_dylora", *overrides])


def test_unreachable_epsilon_is_refused_by_the_privacy_plan():
    """Validation leaves the accountant alone (no torch); the run's plan (CLI precheck, run setup) refuses."""
    s = compose(["+fleet=8dev_test", "simulation=ray", "method=dp_dylora", "privacy.noise_multiplier=0.3",
                 "privacy.target_epsilon=0.05"])
    with pytest.raises(ConfigError, match="privacy.target_epsilon.*unreachable"):
        resolve_plan(s)


def test_good_config_resolves_delta_and_calibrates_sigma():
    plan = resolve_plan(compose(["+fleet=80dev", "model=tiny-llama", "simulation=ray", "method=dp_lora",
                                 "privacy.target_epsilon=4", "rounds=10"]))
    assert plan.delta == pytest.approx(1 / 80**1.1) and plan.sample_rate == pytest.approx(16 / 80)
    assert plan.expected_cohort == 16 and 0 < plan.sigma and plan.planned_epsilon <= 4.0
    none = compose(["+fleet=80dev"])
    assert none.privacy.mode == "none" and none.method.dylora is None
    other = compose(["+fleet=80dev", "privacy=user_dp", "privacy.target_epsilon=8"])  # any method
    assert other.method.name == "fedavg_lora" and other.privacy.mode == "user"

