"""The Gaussian mechanism over any update dict, the samplers, and DP-FedAvg through the strategy's own path."""

import math

import numpy as np
import pytest

from fleet.devices import build_fleet
from fleet.arch import ArchShape
from privacy.dp_fedavg import UserLevelDP, with_user_dp
from server.strategy import build_strategy
from privacy.mechanism import clip_update, dp_mean, l2_norm, privatize_on_client
from privacy.noise import SecureNoise, SeededNoise
from privacy.sampling import fixed_cohort, poisson_cohort
from protocol.messages import Update
from runconfig.load import compose
from strategies.fleet_fedavg import FleetFedAvg

pytestmark = pytest.mark.privacy

SHAPE = ArchShape("toy", hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=2,
                  head_dim=16, vocab_size=64)


def random_delta(rng, keys=None, scale=1.0):
    keys = keys or {"a.lora_A.weight": (4, 16), "a.lora_B.weight": (16, 4), "b.lora_A.weight": (2, 8)}
    return {k: rng.normal(0, scale, s).astype(np.float32) for k, s in keys.items()}


def test_no_clipped_update_exceeds_c():
    rng = np.random.default_rng(0)
    for scale in (1e-4, 0.01, 1.0, 100.0):
        for _ in range(50):
            delta = random_delta(rng, scale=scale)
            clipped, norm = clip_update(delta, 0.5)
            assert l2_norm(clipped) <= 0.5 * (1 + 1e-12)
            if norm <= 0.5:  # small updates pass unchanged
                assert all(np.array_equal(clipped[k], delta[k].astype(np.float64)) for k in delta)


@pytest.mark.parametrize("source", [SeededNoise(1), SecureNoise()], ids=["seeded", "secure"])
def test_server_noise_has_the_configured_std(source):
    """The release of zero updates is pure noise: std sigma*C/denominator per coordinate, mean 0."""
    sigma, clip, denom, n = 1.3, 0.7, 4.0, 200_000
    template = {"x": np.zeros(n // 2, np.float32), "y": np.zeros((n // 4, 2), np.float32)}
    mean, _ = dp_mean([], template, clip, sigma, denom, source)
    draws = np.concatenate([v.ravel() for v in mean.values()]).astype(np.float64) * denom
    expected = sigma * clip
    # sample std of n normals: relative standard error 1/sqrt(2n) ~ 0.16%; allow 5 standard errors
    assert abs(draws.std() / expected - 1) < 5 / math.sqrt(2 * n)
    assert abs(draws.mean()) < 5 * expected / math.sqrt(n)
    kurtosis = np.mean((draws / draws.std()) ** 4)
    assert abs(kurtosis - 3) < 0.1  # Gaussian tails, not uniform or Laplace


def test_seeded_noise_is_reproducible_and_secure_is_not():
    t = {"x": np.zeros(100, np.float32)}
    a, _ = dp_mean([], t, 1.0, 1.0, 1.0, SeededNoise(3))
    b, _ = dp_mean([], t, 1.0, 1.0, 1.0, SeededNoise(3))
    c, _ = dp_mean([], t, 1.0, 1.0, 1.0, SecureNoise())
    d, _ = dp_mean([], t, 1.0, 1.0, 1.0, SecureNoise())
    assert np.array_equal(a["x"], b["x"]) and not np.array_equal(c["x"], d["x"])


def test_clipping_and_noise_apply_to_any_update_shape():
    """Heterogeneous ranks zero-padded into the global shape (FedSpine) or forward-only deltas (ZeroQAT): the
    whole dict is clipped as one vector and every coordinate gets noise."""
    rng = np.random.default_rng(1)
    template = {"l0.lora_A.weight": np.zeros((8, 16)), "l0.lora_B.weight": np.zeros((16, 8)),
                "l1.q_proj.weight": np.zeros((16, 16))}  # e.g. a forward-only client's full-weight delta
    padded = {k: np.zeros(v.shape, np.float32) for k, v in template.items()}
    padded["l0.lora_A.weight"][:2] = rng.normal(0, 5, (2, 16))  # rank 2 of 8, zero padded
    padded["l0.lora_B.weight"][:, :2] = rng.normal(0, 5, (16, 2))
    forward_only = {k: rng.normal(0, 3, v.shape).astype(np.float32) for k, v in template.items()}
    clip = 0.25
    for d in (padded, forward_only):
        assert l2_norm(clip_update(d, clip)[0]) == pytest.approx(clip)
    exact, _ = dp_mean([padded, forward_only], template, clip, 0.0, 2.0, SeededNoise(0))
    summed = {k: (clip_update(padded, clip)[0][k] + clip_update(forward_only, clip)[0][k]) / 2 for k in template}
    for k in template:
        np.testing.assert_allclose(exact[k], summed[k], rtol=1e-6, atol=1e-9)
    noisy, _ = dp_mean([padded, forward_only], template, clip, 1.0, 2.0, SeededNoise(0))
    for k in template:  # noise everywhere, including the zero-padded rank components
        assert np.all(noisy[k] != exact[k])
    with pytest.raises(ValueError, match="keys and shapes"):
        dp_mean([{"other": np.zeros(3)}], template, clip, 1.0, 2.0, SeededNoise(0))


def test_client_side_shares_sum_to_the_configured_noise_with_top_up_for_dropouts():
    sigma, clip, m, n, kept = 1.0, 0.5, 8, 20_000, 5
    template = {"x": np.zeros(n, np.float32)}
    zero = {"x": np.zeros(n, np.float32)}
    shares = [privatize_on_client(zero, clip, sigma * clip / math.sqrt(m), SeededNoise(i)) for i in range(kept)]
    mean, _ = dp_mean(shares, template, clip, sigma, 1.0, SeededNoise(99), pre_noised=True, noised_share_each=1 / m)
    assert abs(mean["x"].astype(np.float64).std() / (sigma * clip) - 1) < 5 / math.sqrt(2 * n)
    big = {"x": np.full(n, 10.0, np.float32)}
    noised = privatize_on_client(big, clip, 0.0, SeededNoise(0))
    assert l2_norm(noised) == pytest.approx(clip, rel=1e-6)  # the client clips before its noise


def test_poisson_sampler_rate_and_fixed_sampler_size():
    population = list(range(1000))
    sizes = [len(poisson_cohort(population, 0.05, SeededNoise(s))) for s in range(200)]
    assert abs(np.mean(sizes) - 50) < 5 * math.sqrt(1000 * 0.05 * 0.95 / 200)
    assert np.std(sizes) > 3  # varies, as Poisson sampling does (Flower's sample_nodes would not)
    member_rate = np.mean([7 in poisson_cohort(population, 0.05, SeededNoise(s)) for s in range(2000)])
    assert abs(member_rate - 0.05) < 0.02
    for s in range(20):
        cohort = fixed_cohort(population, 50, SeededNoise(s))
        assert len(cohort) == len(set(cohort)) == 50
    with pytest.raises(ValueError):
        fixed_cohort(population[:10], 11, SeededNoise(0))


def dp_and_plain(overrides):
    settings = compose(["+fleet=8dev_test", *overrides])
    devices = build_fleet(settings.fleet, settings.seed)
    return settings, build_strategy(settings, devices, SHAPE, 1), FleetFedAvg(settings, devices, SHAPE, 1)


def test_dp_fedavg_with_no_noise_and_large_c_is_fedavg_through_the_strategy():
    settings, dp, plain = dp_and_plain(["privacy=user_dp", "privacy.target_epsilon=inf", "privacy.clip_norm=1e9"])
    assert isinstance(dp.privacy, UserLevelDP) and dp.privacy.plan.sigma == 0
    rng = np.random.default_rng(3)
    template = random_delta(rng)
    m = settings.federation.cohort_size  # the fixed denominator equals the number of updates here
    updates = [Update(device_index=i, server_round=1, delta=random_delta(rng), num_examples=10) for i in range(m)]
    dp._global = plain._global = template
    ours, fedavg = dp.round_delta(1, updates), plain.round_delta(1, updates)
    for k in template:
        np.testing.assert_allclose(ours[k], fedavg[k], rtol=1e-6, atol=0)


def test_dp_strategy_clips_noises_and_accounts():
    settings, dp, _ = dp_and_plain(["privacy=user_dp", "privacy.noise_multiplier=1.0", "privacy.target_epsilon=null",
                                    "privacy.clip_norm=0.1"])
    rng = np.random.default_rng(4)
    template = random_delta(rng)
    dp._global = template
    dp.node_of_device = {d.index: d.index + 100 for d in dp.devices}
    cohort, _ = dp.select(1, settings.federation.cohort_size, "train", 100)
    assert dp.privacy.budget.rounds_spent == 1
    big = [Update(device_index=i, server_round=1, delta=random_delta(rng, scale=50.0), num_examples=1 + 1000 * i)
           for i in range(4)]
    out = dp.round_delta(1, big)
    # one user moves the (pre-noise) mean by at most C / (q N) whatever its example count
    assert all(np.isfinite(v).all() for v in out.values())
    metrics = dp.privacy.metrics()
    assert metrics["privacy/epsilon"] == pytest.approx(
        dp.privacy.budget.accountant.get_epsilon(delta=dp.privacy.plan.delta))
    assert metrics["privacy/noise_multiplier"] == 1.0
    layer = dp.privacy
    assert with_user_dp(dp) is dp and dp.privacy is layer and dp.train_selection is layer.selection


def test_dp_strategy_stops_when_the_budget_is_spent():
    settings, dp, _ = dp_and_plain(["privacy=user_dp", "privacy.noise_multiplier=1.0", "privacy.target_epsilon=3",
                                    "rounds=100"])
    dp.node_of_device = {d.index: d.index + 100 for d in dp.devices}
    spent = 0
    for rnd in range(1, 101):
        cohort, _ = dp.select(rnd, settings.federation.cohort_size, "train", 100)
        if dp.privacy.exhausted:
            assert cohort == []
            break
        spent += 1
    assert 0 < spent < 100
    assert dp.privacy.budget.epsilon() <= 3.0
    state = dp.get_state()
    _, resumed, _ = dp_and_plain(["privacy=user_dp", "privacy.noise_multiplier=1.0", "privacy.target_epsilon=3",
                                  "rounds=100"])
    resumed.set_state(state)
    assert resumed.privacy.budget.rounds_spent == spent and not resumed.privacy.budget.allows_another_round()
