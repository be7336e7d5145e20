"""FedSpine's strategy and trainer end to end: in-process rounds, memory-feasible arms, a real Ray simulation."""

import json
import math

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli
from strategies.events import OnRound
from runconfig.load import ConfigError, compose
from runconfig.plain import to_plain

pytestmark = pytest.mark.fedspine

SCHEDULE = ["client.local_steps=4", "method.fedspine.prune_every=2", "method.fedspine.sparsity_step=0.25"]


def build(method, fast_overrides, tmp_path, extra=()):
    from server.preflight import prepare
    from strategies import strategy_class

    settings = compose(["+fleet=8dev_test", f"method={method}", f"tracking.uri=sqlite:///{tmp_path}/m.db",
                        *SCHEDULE, *fast_overrides, *extra])
    prepared = prepare(settings, show_progress=False)
    strategy = strategy_class(method)(settings, prepared.devices, prepared.shape, concurrency=1)
    return settings, prepared, strategy


def run_rounds(settings, prepared, strategy, rounds):
    from models.base_checkpoint import load_base_model
    from models.lora import adapter_arrays, attach_lora
    from protocol.messages import to_array_record
    from simulations.inprocess import InProcessGrid

    peft = attach_lora(load_base_model(prepared.base_folder), settings.method.lora, settings.seed)
    history = []
    strategy.observers.append(OnRound(lambda r, m: history.append(dict(m))))
    result = strategy.start(InProcessGrid(to_plain(settings), settings.fleet.size),
                            to_array_record(adapter_arrays(peft)), num_rounds=rounds)
    return result, history


def test_prune_and_tune_rounds_in_process(fast_overrides, tmp_path):
    from pruning.structure import Structure
    from strategies.fedspine import FedSpine

    settings, prepared, strategy = build("fedspine", fast_overrides, tmp_path)
    replies, parse = [], strategy.parse_update
    strategy.parse_update = lambda msg: replies.append(parse(msg)) or replies[-1]  # the metrics devices sent
    result, history = run_rounds(settings, prepared, strategy, rounds=2)
    assert all(h["fleet/failures"] == 0 and h["fleet/replies"] >= 1 for h in history)
    # loss_pruned: the loss right after the last pruning step (iteration 3 of 4), neither the dense start nor the end
    for u in replies:
        m = u.metrics
        if m["prune_steps"] == 0:
            assert m["loss_pruned"] == m["loss_start"]
        else:
            assert np.isfinite(m["loss_pruned"]) and m["loss_pruned"] not in (m["loss_start"], m["loss_end"])
    assert any(u.metrics["prune_steps"] > 0 for u in replies)
    # devices pruned toward their arms' ratios, one pruning step per round (iterations 2 of 4)
    assert strategy.structures and all(s.sparsity(strategy.dims, strategy.hidden) > 0
                                       for s in strategy.structures.values())
    for row in strategy.arm_log:
        assert row["rank"] in settings.method.fedspine.ranks
        assert 0 <= row["ratio"] <= settings.method.fedspine.max_ratio
    assert sum(b.t for b in strategy.bandits.values()) == len(strategy.arm_log)  # one bandit update per reply
    for key in ("fedspine/coverage", "fedspine/reward_mean", "fedspine/cohort_rank", "bandit/pulls_total"):
        assert key in history[-1]
    # the global adapter moved in full coordinates, at the full rank
    arrays = {k: v.numpy() for k, v in result.arrays.items()}
    assert all(v.shape[0] == 16 or v.shape[1] == 16 for v in arrays.values())
    assert any(np.abs(v).sum() > 0 for k, v in arrays.items() if "lora_B" in k)
    # checkpoint round trip: same structures, bandits and next arms
    state = json.loads(json.dumps(strategy.get_state()))
    clone = FedSpine(settings, prepared.devices, prepared.shape, concurrency=1)
    clone.set_state(state)
    assert clone.get_state() == state
    for d in prepared.devices:
        assert clone.arm_for(d, 3) == strategy.arm_for(d, 3)
    assert isinstance(next(iter(clone.structures.values())), Structure)


def test_no_device_gets_an_arm_that_does_not_fit(fast_overrides, tmp_path):
    from pruning.structure import Structure

    settings, prepared, strategy = build("fedspine", fast_overrides, tmp_path)
    dense = Structure.dense(strategy.dims)
    need = {r: strategy.training_memory(dense, r) for r in settings.method.fedspine.ranks}
    assert need[2] < need[4] < need[8] < need[16]
    phones = settings.fleet.classes["pixel_8"]
    phones.usable_memory_fraction = 1.0
    phones.memory_gb = (need[4] + need[8]) / 2 / 2**30  # ranks 2 and 4 fit, 8 and 16 do not
    settings.fleet.classes["oneplus_12"].memory_gb = need[2] / 2 / 2**30  # nothing fits
    for d in strategy.devices:  # the fleet's devices share their class profile objects
        if d.class_name == "pixel_8":
            d.profile.memory_gb, d.profile.usable_memory_fraction = phones.memory_gb, 1.0
        if d.class_name == "oneplus_12":
            d.profile.memory_gb = settings.fleet.classes["oneplus_12"].memory_gb
    seen = set()
    for rnd in range(1, 6):
        for d in strategy.devices:
            arm = strategy.arm_for(d, rnd)
            work = strategy.work_for(d, rnd)
            if d.class_name == "oneplus_12":
                assert arm is None and math.isinf(strategy.memory_needed(d, work, 0))
                continue
            assert strategy.memory_needed(d, work, 0) <= d.usable_memory_bytes
            if d.class_name == "pixel_8":
                seen.add(arm[1])
                strategy.bandit_of(d).update(arm, 1.0 / arm[1])  # pretend: make the bandit move on
    assert seen and seen <= {2, 4}
    strategy.node_of_device = {d.index: d.index + 1 for d in strategy.devices}  # as discover() would
    skipped = 0
    for rnd in range(1, 11):  # phones are online 60% of rounds
        cohort, ledger = strategy.select(rnd, settings.fleet.size, "train", 0)
        assert all(d.class_name != "oneplus_12" for d in cohort)
        skipped += ledger.skipped_memory
    assert skipped >= 1


def test_hetlora_ranks_follow_device_classes(fast_overrides, tmp_path):
    settings, prepared, strategy = build("hetlora", fast_overrides, tmp_path)
    _, history = run_rounds(settings, prepared, strategy, rounds=1)
    assert history[-1]["fleet/failures"] == 0
    for row in strategy.arm_log:
        assert row["rank"] == settings.method.fedspine.class_ranks[row["class"]]
        assert row["sparsity"] == 0.0


def test_fedspine_config_errors_name_the_key(fast_overrides):
    with pytest.raises(ConfigError, match="method.fedspine.ranks"):
        compose(["+fleet=8dev_test", "method=fedspine", "method.fedspine.ranks=[2,32]", *fast_overrides])
    with pytest.raises(ConfigError, match="method.fedspine.class_ranks"):
        compose(["+fleet=8dev_test", "method=hetlora", "~method.fedspine.class_ranks.pixel_8", *fast_overrides])


def test_real_simulation_with_fedspine(tmp_path, fast_overrides):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["-m", "simulations.run", "+fleet=8dev_test", "rounds=2", "method=fedspine", f"tracking.uri={uri}",
            f"hydra.run.dir={tmp_path / 'out'}", *SCHEDULE, *fast_overrides]
    proc = run_cli(args, cwd=tmp_path, env_extra={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("edgefleet").experiment_id])
    assert run.info.status == "FINISHED"
    for key in ("fedspine/coverage", "fedspine/cohort_sparsity", "bandit/pulls_total", "eval/global_ppl"):
        assert client.get_metric_history(run.info.run_id, key), key
    assert [m.value for m in client.get_metric_history(run.info.run_id, "fleet/failures")] == [0, 0]
    assert max(m.value for m in client.get_metric_history(run.info.run_id, "fedspine/cohort_sparsity")) > 0
    saved = {a.path for a in client.list_artifacts(run.info.run_id, "fedspine")}
    assert {"fedspine/bandit_round001.json", "fedspine/bandit_round002.json"} <= saved
    table = json.loads(open(client.download_artifacts(run.info.run_id, "fedspine/bandit_round002.json",
                                                       str(tmp_path))).read())
    assert all({"t", "cells", "best_arm"} <= set(v) for v in table.values())
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["method"] == "fedspine" and summary["failures"] == 0
