"""User-level DP over heterogeneous (pruned, mixed-rank) updates, the reply schema, and the combined federation."""

import dataclasses
import math

import numpy as np
import pytest

from fleet.arch import ArchShape
from fleet.devices import build_fleet
from strategies.events import OnRound
from privacy.mechanism import clip_update, dp_mean, l2_norm
from privacy.noise import SeededNoise
from protocol import messages
from protocol.messages import Update, to_array_record
from pruning.structure import Dims, Structure, full_shape, scatter_from, select, slice_to
from runconfig.load import compose

pytestmark = pytest.mark.privacy

DIMS = Dims(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=48)
HIDDEN, MAX_RANK = 32, 8
PROJ = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
        "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
KEYS = [f"base_model.model.model.layers.{i}.{PROJ[p]}.{p}.lora_{ab}.weight"
        for i in range(DIMS.num_layers) for p in PROJ for ab in "AB"]
SHAPES = {k: full_shape(k, DIMS, HIDDEN, MAX_RANK) for k in KEYS}


def mixed_cohort(rng, scale=1.0):
    """Sub-updates of a pruned-and-truncated cohort: (delta in own coordinates, structure, rank)."""
    out = []
    for level, rank in ((0.0, 4), (0.25, 2), (0.5, 6), (0.5, 4), (0.0, 1)):  # ranks 7, 8: padding only
        structure = Structure.dense(DIMS)
        if level:
            scores = ([rng.random(DIMS.num_heads) for _ in range(DIMS.num_layers)],
                      [rng.random(DIMS.intermediate_size) for _ in range(DIMS.num_layers)])
            structure = select(*scores, structure, DIMS, level)
        dense_full = {k: rng.normal(0, scale, shape) for k, shape in SHAPES.items()}
        out.append((slice_to(dense_full, structure, DIMS, rank), structure, rank))
    return out


def test_mixed_shape_cohort_clipped_in_full_coordinates_and_noised_everywhere():
    rng = np.random.default_rng(0)
    cohort = mixed_cohort(rng, scale=3.0)
    clip, sigma, denominator = 0.5, 1.3, 4.0
    full = [scatter_from(d, s, DIMS, r, SHAPES)[0] for d, s, r in cohort]
    held = {k: np.zeros(s, bool) for k, s in SHAPES.items()}
    for d, s, r in cohort:
        for k, h in scatter_from(d, s, DIMS, r, SHAPES)[1].items():
            held[k] |= h > 0
    for (sub, _, _), f in zip(cohort, full):
        assert l2_norm(f) == pytest.approx(l2_norm(sub))  # zero padding adds no norm: sensitivity is C
        clipped, _ = clip_update(f, clip)
        assert l2_norm(clipped) <= clip * (1 + 1e-12)
    # the release minus the noise-free clipped mean is pure noise, sigma C / denominator on every coordinate
    noiseless, _ = dp_mean(full, {k: np.zeros(s) for k, s in SHAPES.items()}, clip, 0.0, denominator, SeededNoise(1))
    draws = {True: [], False: []}
    for seed in range(40):
        noisy, report = dp_mean(full, {k: np.zeros(s) for k, s in SHAPES.items()}, clip, sigma, denominator,
                                SeededNoise(seed))
        assert report.clipped == len(full)
        for k in SHAPES:
            noise = (noisy[k].astype(np.float64) - noiseless[k]) * denominator / (sigma * clip)
            draws[True].append(noise[held[k]])
            draws[False].append(noise[~held[k]])
    padding, holders = np.concatenate(draws[False]), np.concatenate(draws[True])
    assert padding.size > 10_000 and holders.size > 10_000  # padding and pruned coordinates are many
    for sample in (padding, holders):
        assert abs(sample.std() - 1) < 5 / math.sqrt(2 * sample.size) + 1e-3  # float32 release rounding
        assert abs(sample.mean()) < 5 / math.sqrt(sample.size)


def test_epsilon_is_the_same_for_mixed_and_same_shape_updates():
    """The accountant sees only (q, sigma, rounds, delta): the same plan and epsilon whatever the shapes."""
    common = ["+fleet=8dev_test", "model=tiny-llama", "privacy=user_dp", "privacy.target_epsilon=4", "rounds=6"]
    plans = {}
    for method in ("fedavg_lora", "hetlora", "combined", "fedspine_fixed"):
        from privacy.plan import resolve_plan

        s = compose([*common, f"method={method}"])
        plan = resolve_plan(s)
        budget = plan.new_budget(s.privacy.accountant, s.privacy.sampling)
        for _ in range(s.rounds):
            budget.step()
        plans[method] = (plan.sample_rate, plan.sigma, plan.delta, budget.epsilon())
    assert len(set(plans.values())) == 1, plans
    assert 0 < plans["combined"][3] <= 4.0


# ------------------------------------------------------------------------------------------ the reply schema
SHAPE = ArchShape("toy", hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=2,
                  head_dim=16, vocab_size=64)
TOY = {"a.lora_A.weight": (4, 16), "a.lora_B.weight": (16, 4)}
UNLISTED = "some_metric_nobody_classified"


def schema_reply(index: int, rng) -> Update:
    """A reply carrying every field of the schema and every metric key it names (and one it does not)."""
    metrics = {key: float(rng.uniform(0.5, 2.0)) for key in messages.REPLY_METRICS}
    metrics[UNLISTED] = 1.0
    return Update(device_index=index, server_round=1, delta={k: rng.normal(0, 1, s).astype(np.float32)
                                                              for k, s in TOY.items()},
                  num_examples=10 + index, metrics=metrics, model_version=0)


def release(mutate=None):
    """What a DP server publishes for one round (new global adapter, round metrics), replies built from the schema;
    ``mutate(update)`` changes one device's reply first."""
    from flwr.app import ConfigRecord, Message

    from server.strategy import build_strategy
    from simulations.inprocess import ensure_task_identity

    ensure_task_identity()
    if not hasattr(release, "settings"):  # composed once (Hydra composition is the slow part)
        release.settings = compose(["+fleet=8dev_test", "privacy=user_dp", "privacy.noise_multiplier=1.0",
                                    "privacy.target_epsilon=null", "validation.norm_outlier_factor=null"])
    settings = dataclasses.replace(release.settings, output_dir=str(release.tmp))
    devices = build_fleet(settings.fleet, settings.seed)
    dp = build_strategy(settings, devices, SHAPE, 1)
    dp.node_of_device = {d.index: d.index + 1 for d in devices}
    glob = {k: np.zeros(s, np.float32) for k, s in TOY.items()}
    sent = list(dp.configure_train(1, to_array_record(glob), ConfigRecord(), None))
    assert len(sent) >= 2
    rng = np.random.default_rng(7)
    replies = []
    for i, msg in enumerate(sent):
        update = schema_reply(msg.metadata.dst_node_id - 1, rng)
        if mutate is not None and i == 0:
            mutate(update)
        replies.append(Message(update.to_content(), reply_to=msg))
    arrays, metrics = dp.aggregate_train(1, replies)
    return {k: v.numpy() for k, v in arrays.items()}, dict(metrics)


def same(a, b) -> bool:
    arrays_a, metrics_a = a
    arrays_b, metrics_b = b
    return metrics_a.keys() == metrics_b.keys() and all(
        metrics_a[k] == metrics_b[k] for k in metrics_a) and all(np.array_equal(arrays_a[k], arrays_b[k])
                                                                 for k in arrays_a)


def test_no_private_reply_field_escapes_the_mechanism(tmp_path):
    """From the schema: changing any part of a reply classed private (or not classed at all) changes nothing the
    DP server publishes; changing the delta (the mechanism's input) does."""
    release.tmp = tmp_path
    classes = set(messages.REPLY_FIELDS.values()) | set(messages.REPLY_METRICS.values())
    every_field = {f.name for f in dataclasses.fields(Update)}
    assert every_field == set(messages.REPLY_FIELDS), "every field of a reply must be classed"
    assert messages.metric_class(UNLISTED) == messages.PRIVATE  # default deny
    base = release()
    checked = 0
    for name, cls in messages.REPLY_FIELDS.items():
        if cls == messages.PRIVATE:
            def mutate(u, name=name):
                setattr(u, name, getattr(u, name) * 3 + 1)
            assert same(release(mutate), base), name
            checked += 1
    private_metrics = [k for k, c in messages.REPLY_METRICS.items()
                       if c in (messages.PRIVATE, messages.RECORD_ACCOUNTING)] + [UNLISTED]
    for key in private_metrics:
        def mutate(u, key=key):
            u.metrics[key] = u.metrics[key] * 3 + 1
        assert same(release(mutate), base), key
        checked += 1
    assert checked >= 8 and messages.MECHANISM in classes

    def mutate_delta(u):
        u.delta = {k: -v for k, v in u.delta.items()}  # same norm (clipped alike), another direction
    assert not same(release(mutate_delta), base)  # the test can see a change where there is one


# --------------------------------------------------------------------------------- the combined federation
def test_combined_federation_runs_under_dp_with_finite_epsilon(fast_overrides, tmp_path):
    """8 devices, in-process: pruned Jetsons (public masks the server recomputes) and ZeroQAT phones, DP on."""
    from models.base_checkpoint import load_base_model
    from models.lora import adapter_arrays, attach_lora
    from server.strategy import build_strategy
    from runconfig.plain import to_plain
    from server.preflight import prepare
    from simulations.inprocess import InProcessGrid

    settings = compose(["+fleet=8dev_test", "model=tiny-llama", "method=combined", "rounds=2",
                        "client.local_steps=2", "method.fedspine.prune_every=1", "method.fedspine.sparsity_step=0.25",
                        "federation.eval_cohort_size=0", "privacy.target_epsilon=8",
                        f"tracking.uri=sqlite:///{tmp_path}/m.db", *fast_overrides])
    settings = dataclasses.replace(settings, output_dir=str(tmp_path / "out"))
    prepared = prepare(settings, show_progress=False)
    strategy = build_strategy(settings, prepared.devices, prepared.shape, concurrency=1)
    history = []
    strategy.observers.append(OnRound(lambda r, m: history.append(dict(m))))
    peft = attach_lora(load_base_model(prepared.base_folder), settings.method.lora, settings.seed)
    with InProcessGrid(to_plain(settings), settings.fleet.size) as grid:
        strategy.start(grid, to_array_record(adapter_arrays(peft)), num_rounds=2)
    assert strategy.counters.model_version >= 1  # at least one round aggregated updates
    last = history[-1]
    assert math.isfinite(last["privacy/epsilon"]) and 0 < last["privacy/epsilon"] <= 8
    assert sum(h.get("fleet/rejected", 0) for h in history) == 0  # device masks == the server's public ones
    assert not any(k.startswith("train/loss") for h in history for k in h)  # private: withheld under DP
    rows = strategy.arm_log
    assert rows and all(r["gain"] == 0 and r["update"] == 0 for r in rows)  # the bandit saw public feedback only
    assert any(s.sparsity(strategy.dims, strategy.hidden) > 0 for s in strategy.structures.values())
    phones = [d.index for d in prepared.devices if d.profile.trainer == "zeroqat"]
    assert all(i not in strategy.structures for i in phones)
    up = {k: sum(h.get(k, 0) for h in history) for k in ("comm/bytes_up/pixel_8", "comm/bytes_up/oneplus_12")}
    assert sum(up.values()) > 0, up  # phones' ZeroQAT updates reached the mechanism
    assert last["fedspine/pixel_8/rank"] == settings.method.lora.rank
