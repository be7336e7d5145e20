"""Empirical privacy audit: can an attacker tell from the final model whether a canary user took part?

A toy linear-regression federation trained with the very same Poisson sampler, clipping, Gaussian noise and
accountant as the fleet. The canary user's data (x = e_0) pushes weight 0, which no other user touches, so
w_final[0] is the best distinguishing statistic (Andrew et al. 2023 use the cosine with the canary's update).
For an (epsilon, delta)-DP mechanism every threshold test has TPR - FPR <= (e^eps - 1 + 2 delta) / (e^eps + 1);
the measured advantage must stay below it, while without noise the same audit succeeds (it has power).
"""

import math

import numpy as np
import pytest

from privacy.accounting import calibrate_sigma, epsilon_for
from privacy.mechanism import dp_mean
from privacy.noise import SeededNoise
from privacy.sampling import poisson_cohort

pytestmark = pytest.mark.privacy

N, Q, ROUNDS, CLIP, DIM, LR, DELTA = 40, 0.5, 5, 1.0, 8, 0.5, 1e-3


def train_once(with_canary: bool, sigma: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(N, DIM))
    xs[:, 0] = 0.0  # ordinary users never touch weight 0
    ys = xs @ rng.normal(size=DIM)
    if with_canary:
        xs[0], ys[0] = np.eye(DIM)[0], 100.0  # the canary: a huge target on an unused direction
    w = np.zeros(DIM)
    sampler, noise = SeededNoise(seed + 1), SeededNoise(seed + 2)
    for _ in range(ROUNDS):
        cohort = poisson_cohort(range(N), Q, sampler)
        deltas = [{"w": -LR * (w @ xs[i] - ys[i]) * xs[i]} for i in cohort]
        mean, _ = dp_mean(deltas, {"w": w}, CLIP, sigma, Q * N, noise)
        w = w + mean["w"].astype(np.float64)
    return float(w[0])


def advantage(sigma: float, trials: int) -> float:
    inn = np.array([train_once(True, sigma, 2 * t) for t in range(trials)])
    out = np.array([train_once(False, sigma, 2 * t + 1) for t in range(trials)])
    thresholds = np.unique(np.concatenate([inn, out]))
    return float(max(np.mean(inn > t) - np.mean(out > t) for t in thresholds))


def test_canary_advantage_stays_below_what_epsilon_allows():
    target = 2.0
    sigma = calibrate_sigma(target, DELTA, Q, ROUNDS, "rdp", "poisson", N)
    eps = epsilon_for("rdp", "poisson", N, sigma, Q, ROUNDS, DELTA)
    bound = (math.exp(eps) - 1 + 2 * DELTA) / (math.exp(eps) + 1)
    trials = 300
    slack = 3 * math.sqrt(2 * 0.25 / trials)  # ~3 standard errors of a difference of two proportions
    measured = advantage(sigma, trials)
    assert measured <= bound + slack, (measured, bound)
    # the same audit without noise sees the canary almost every time: far beyond what epsilon=2 allows
    leaky = advantage(1e-6, 100)
    assert leaky > bound + 0.1, (leaky, bound)
