"""Heterogeneous aggregation against a hand-worked example; the smooth-UCB bandit on a known environment."""

import numpy as np
import pytest

from pruning.structure import Dims, Structure, scatter_from, slice_to
from strategies.bandit import SmoothUCB
from strategies.hetero_aggregation import SubUpdate, aggregate_hetero, coverage

pytestmark = pytest.mark.fedspine

P = "base_model.model.model.layers.0."
QA, QB, DA = P + "self_attn.q_proj.lora_A.weight", P + "self_attn.q_proj.lora_B.weight", P + "mlp.down_proj.lora_A.weight"
# one layer, 2 query heads in 1 KV group, head_dim 1, 2 MLP channels, hidden 2, max rank 2
DIMS = Dims(num_layers=1, num_heads=2, num_kv_heads=1, head_dim=1, intermediate_size=2)
SHAPES = {QA: (2, 2), QB: (2, 2), DA: (2, 2)}  # A: (rank, in), B: (out, rank)


def sub(structure, rank, value):
    full = {k: np.full(s, value, np.float32) for k, s in SHAPES.items()}
    return slice_to(full, structure, DIMS, rank)


def test_mixed_ranks_and_masks_match_hand_worked_example():
    dense = Structure.dense(DIMS)
    pruned = Structure([np.array([False, True])], [np.array([True, False])])  # keeps head 1 and channel 0
    a = SubUpdate(sub(dense, 2, 1.0), dense, rank=2, weight=1.0)  # every coordinate, value 1, weight 1
    b = SubUpdate(sub(pruned, 1, 5.0), pruned, rank=1, weight=3.0)  # rank 1 on the pruned model, value 5
    assert b.delta[QA].shape == (1, 2) and b.delta[QB].shape == (1, 1) and b.delta[DA].shape == (1, 1)
    out = aggregate_hetero([a, b], SHAPES, DIMS)
    # coordinates both hold: (1*1 + 3*5) / (1 + 3) = 4; coordinates only device a holds: 1
    np.testing.assert_allclose(out[QA], [[4, 4], [1, 1]])  # q lora_A: b holds rank row 0, all hidden columns
    np.testing.assert_allclose(out[QB], [[1, 1], [4, 1]])  # q lora_B: b holds head 1's row, rank column 0
    np.testing.assert_allclose(out[DA], [[4, 1], [1, 1]])  # down lora_A: b holds rank row 0, channel 0's column
    only_b = aggregate_hetero([b], SHAPES, DIMS)  # coordinates nobody holds get no change (0), not dilution
    np.testing.assert_allclose(only_b[QB], [[0, 0], [5, 0]])
    assert coverage([b], SHAPES, DIMS) == pytest.approx((2 + 1 + 1) / 12)
    assert coverage([a, b], SHAPES, DIMS) == 1.0


def test_scatter_inverts_slice():
    rng = np.random.default_rng(0)
    dims = Dims(num_layers=1, num_heads=4, num_kv_heads=2, head_dim=3, intermediate_size=5)
    shapes = {P + "self_attn.o_proj.lora_A.weight": (4, 12), P + "self_attn.k_proj.lora_B.weight": (6, 4),
              P + "mlp.up_proj.lora_B.weight": (5, 4)}
    full = {k: rng.normal(size=s) for k, s in shapes.items()}
    st = Structure([np.array([1, 0, 0, 1], bool)], [np.array([1, 0, 1, 1, 0], bool)])
    small = slice_to(full, st, dims, rank=2)
    assert small[P + "self_attn.o_proj.lora_A.weight"].shape == (2, 6)
    assert small[P + "self_attn.k_proj.lora_B.weight"].shape == (6, 2)  # both KV groups still in use
    assert small[P + "mlp.up_proj.lora_B.weight"].shape == (3, 2)
    values, holders = scatter_from(small, st, dims, 2, shapes)
    for k in shapes:
        np.testing.assert_allclose(values[k], full[k] * holders[k])


def env_reward(arm):
    """A smooth synthetic environment: best at ratio 0.6, rank 8."""
    ratio, rank = arm
    return 1.0 - (ratio - 0.6) ** 2 * 2 - (np.log2(rank) - 3) ** 2 * 0.1


@pytest.mark.parametrize("frontier", [False, True])
def test_bandit_converges_to_the_best_arm_and_regret_falls(frontier):
    rng = np.random.default_rng(0)
    bandit = SmoothUCB(max_ratio=0.8, ranks=[2, 4, 8, 16, 32], grid=2, bandwidth=0.2, explore=0.3,
                       split_after=2, max_depth=3, frontier=frontier)
    best = max(env_reward((r, k)) for r in np.linspace(0, 0.8, 81) for k in [2, 4, 8, 16, 32])
    regrets = []
    for _ in range(240):
        arm = bandit.choose()
        bandit.update(arm, env_reward(arm) + rng.normal(0, 0.05))
        regrets.append(best - env_reward(arm))
    early, late = np.mean(regrets[:40]), np.mean(regrets[-40:])
    assert late < 0.5 * early
    ratio, rank = bandit.best_arm()
    assert abs(ratio - 0.6) <= 0.1 and rank == 8
    assert len(bandit.cells) > 10  # the partition (5 ranks x 2 intervals) was refined


def test_bandit_respects_feasibility_and_state_round_trips():
    bandit = SmoothUCB(max_ratio=0.8, ranks=[2, 4, 8, 16])
    fits = lambda ratio, rank: rank <= 4 and ratio >= 0.4  # noqa: E731  (a device short of memory)
    for _ in range(30):
        arm = bandit.choose(fits)
        assert arm is not None and fits(*arm)
        bandit.update(arm, env_reward(arm))
    clone = SmoothUCB(max_ratio=0.8, ranks=[2, 4, 8, 16])
    clone.set_state(bandit.get_state())
    assert clone.get_state() == bandit.get_state()
    assert clone.choose(fits) == bandit.choose(fits)
    assert bandit.choose(lambda ratio, rank: False) is None
    fresh = SmoothUCB(max_ratio=0.8, ranks=[2, 4, 8, 16], grid=2)
    assert fresh.choose() == (0.6, 2)  # nothing known: the cheapest work first (lowest rank, most pruning)


def test_frontier_grows_outward_from_the_cheapest_arm():
    """With a frontier, each new cell tried touches one tried before (no jump to the far, expensive corner)."""
    bandit = SmoothUCB(max_ratio=0.8, ranks=[2, 4, 8, 16], grid=2, bandwidth=0.25, explore=0.5, frontier=True)
    free = SmoothUCB(max_ratio=0.8, ranks=[2, 4, 8, 16], grid=2, bandwidth=0.25, explore=0.5, frontier=False)
    flat = lambda arm: 0.0  # noqa: E731  (nothing to prefer: exploration alone decides)
    tried_ranks, free_ranks = [], []
    for _ in range(6):
        for b, log in ((bandit, tried_ranks), (free, free_ranks)):
            arm = b.choose()
            log.append(arm[1])
            b.update(arm, flat(arm))
    assert tried_ranks[0] == free_ranks[0] == 2
    # the frontier climbs one rank at a time; plain UCB jumps to the rank farthest from what it knows
    assert all(b <= 2 * a for a, b in zip(sorted(set(tried_ranks)), sorted(set(tried_ranks))[1:]))
    assert free_ranks[1] == 16 and tried_ranks[1] in (2, 4)
