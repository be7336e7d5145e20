"""Faults without a simulation: availability model, validation rules, robust rules, checkpoints, config checks."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Error, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fleet.availability import failing_devices, on_time, round_duration, selection_size
from fleet.devices import build_fleet
from protocol.messages import Update
from runconfig.load import ConfigError, compose
from runconfig.schema import AggregationConfig, ValidationConfig
from server import checkpoint as ckpt
from strategies.robust_aggregation import aggregate, krum_select
from strategies.update_validation import UpdateValidator

pytestmark = pytest.mark.faults


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages need a run id (Flower sets it in a running ServerApp)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)


# ------------------------------------------------------------------ availability
def test_selection_size_over_selects_and_never_under():
    assert selection_size(10, 0.0) == 10
    assert selection_size(10, 0.3) == 13
    assert selection_size(4, 0.1) == 5  # ceil


def test_deadline_and_over_selection_split_replies():
    arrivals = [("a", 5.0), ("b", 1.0), ("c", 30.0), ("d", 2.0), ("e", 2.0)]
    kept, late, surplus = on_time(arrivals, deadline_s=10.0, keep=3)
    assert late == ["c"]
    assert kept == ["b", "d", "e"] and surplus == ["a"]  # the three earliest on time, reported in input order
    assert on_time(arrivals, None, None) == (["a", "b", "c", "d", "e"], [], [])


def test_round_lasts_until_the_deadline_when_a_reply_is_missing():
    assert round_duration([1.0, 3.0], deadline_s=10.0, missing=0) == 3.0
    assert round_duration([1.0, 3.0], deadline_s=10.0, missing=1) == 10.0
    assert round_duration([1.0, 3.0], deadline_s=None, missing=2) == 3.0


def test_failures_follow_each_class_rate_and_the_seed():
    s = compose(["+fleet=80dev", "fleet.classes.pixel_8.failure_rate=0.5"])
    fleet = build_fleet(s.fleet, s.seed)
    counts = {"pixel_8": 0, "other": 0}
    for seed in range(200):
        failed = failing_devices(fleet, seed)
        counts["pixel_8"] += sum(1 for d in fleet if d.index in failed and d.class_name == "pixel_8")
        counts["other"] += sum(1 for d in fleet if d.index in failed and d.class_name != "pixel_8")
    pixels = sum(1 for d in fleet if d.class_name == "pixel_8")
    assert counts["other"] == 0
    assert abs(counts["pixel_8"] / (200 * pixels) - 0.5) < 0.05
    assert failing_devices(fleet, 7) == failing_devices(fleet, 7)


# ------------------------------------------------------------------ validation
GLOBAL = {"a.lora_A": np.zeros((2, 3), np.float32), "a.lora_B": np.zeros((3, 2), np.float32)}


def node(device):
    return device + 100


def sent_to(device):
    return Message(RecordDict(), dst_node_id=node(device), message_type=MessageType.TRAIN)


def reply(device, delta, server_round=3, version=5, examples=10, claims=None, **metrics):
    update = Update(device_index=device if claims is None else claims, server_round=server_round, delta=delta,
                    num_examples=examples, model_version=version,
                    metrics={"compute_s": 1.0, "host_gflops": 50.0, "train_loss": 3.0, **metrics})
    return Message(update.to_content(), reply_to=sent_to(device))


def good(scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.standard_normal(v.shape)).astype(np.float32) for k, v in GLOBAL.items()}


def test_every_rule_rejects_with_device_and_reason():
    validator = UpdateValidator(ValidationConfig(max_update_norm=1e4, norm_outlier_factor=50, max_message_mb=0.01))
    bad_dtype = {k: v.astype(np.float64) for k, v in good().items()}
    replies = [
        reply(0, good(seed=0)),
        reply(1, good(seed=1)),
        reply(2, good(seed=2)),
        reply(3, {**good(), "a.lora_A": np.full((2, 3), np.nan, np.float32)}),
        reply(4, {**good(), "a.lora_B": np.zeros((2, 2), np.float32)}),
        reply(5, {"x": np.zeros((2, 3), np.float32), "a.lora_B": np.zeros((3, 2), np.float32)}),
        reply(6, bad_dtype),
        reply(7, good(), server_round=2),
        reply(8, good(), version=4),
        reply(9, good(scale=1e3)),  # under the absolute bound, far above the others
        reply(10, good(scale=1e5)),  # over the absolute bound
        reply(11, {**good(), "pad": np.zeros(8192, np.float32)}),
        reply(12, good(), examples=0),
        reply(13, good(), claims=0),  # a node speaking for another device
        reply(15, good(), compute_s=float("nan")),
        reply(42, good()),  # a node that was sent no work
        Message(Error(code=1, reason="boom"), reply_to=sent_to(14)),
    ]
    checked = validator.check(3, 5, GLOBAL, replies, {node(i): i for i in range(16)})
    assert [u.device_index for u, _ in checked.accepted] == [0, 1, 2]
    reasons = {v.device_index: v.reason for v in checked.rejected}
    assert reasons == {3: "nonfinite", 4: "shapes", 5: "keys", 6: "dtype", 7: "stale_round", 8: "stale_version",
                       9: "norm_outlier", 10: "norm", 11: "oversize", 12: "examples", 13: "unknown_device",
                       15: "metrics", 42: "unknown_device"}
    assert [(v.device_index, v.detail) for v in checked.failed] == [(14, "boom")]
    counts = checked.counts()
    assert counts["fleet/rejected"] == 13 and counts["fleet/failures"] == 1 and counts["fleet/rejected/norm"] == 1


def test_accepted_updates_are_in_device_order_whatever_the_arrival():
    validator = UpdateValidator(ValidationConfig(max_message_mb=64))
    checked = validator.check(3, 5, GLOBAL, [reply(2, good()), reply(0, good()), reply(1, good())],
                              {node(i): i for i in range(3)})
    assert [u.device_index for u, _ in checked.accepted] == [0, 1, 2]


# ------------------------------------------------------------------ robust aggregation
def test_krum_keeps_the_honest_cluster():
    honest = [{"w": np.array([1.0, 1.0], np.float32) + 0.01 * i} for i in range(4)]
    attacker = {"w": np.array([100.0, -100.0], np.float32)}
    deltas = [*honest[:2], attacker, *honest[2:]]
    assert 2 not in krum_select(deltas, num_malicious=1, num_to_select=3)
    agg = aggregate(AggregationConfig(rule="krum", num_malicious=1), deltas, [1.0] * 5)
    assert np.all(np.abs(agg["w"] - 1.0) < 0.05)


def test_trimmed_mean_by_hand():
    deltas = [{"w": np.array([v], np.float32)} for v in (1.0, 2.0, 3.0, 4.0, 1000.0)]
    agg = aggregate(AggregationConfig(rule="trimmed_mean", trim_fraction=0.2), deltas, [1.0] * 5)
    assert agg["w"][0] == pytest.approx(3.0)  # drops 1 and 1000
    assert aggregate(AggregationConfig(rule="mean"), deltas, [1.0] * 5)["w"][0] == pytest.approx(202.0)


# ------------------------------------------------------------------ checkpoints
def make_checkpoint(server_round, state=None):
    return ckpt.Checkpoint(server_round=server_round, arrays=good(seed=server_round), strategy_state=state or {},
                           history={0: {"x": 1.0}}, mlflow_run_id="run", settings={"rounds": 3},
                           rng_state=ckpt.rng_state())


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("crash while writing")


def test_a_crash_during_a_write_keeps_the_last_good_checkpoint(tmp_path):
    path = tmp_path / "checkpoint" / ckpt.FILENAME
    ckpt.save(path, make_checkpoint(1))
    with pytest.raises(RuntimeError, match="crash while writing"):
        ckpt.save(path, make_checkpoint(2, {"bad": Unpicklable()}))
    assert ckpt.load(path).server_round == 1
    assert os.listdir(path.parent) == [ckpt.FILENAME]  # no temp file left behind


def test_a_torn_file_fails_its_digest(tmp_path):
    path = tmp_path / ckpt.FILENAME
    ckpt.save(path, make_checkpoint(1))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(ckpt.CheckpointError, match="damaged"):
        ckpt.load(path)
    path.write_bytes(b"junk")
    with pytest.raises(ckpt.CheckpointError, match="not an edgefleet checkpoint"):
        ckpt.load(path)


def test_strategy_state_hooks_carry_a_privacy_accountant(tmp_path):
    """What issue 4's accountant puts in get_state() comes back equal (Opacus state_dict round trip)."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(5):
        accountant.step(noise_multiplier=1.1, sample_rate=0.05)
    path = tmp_path / ckpt.FILENAME
    ckpt.save(path, make_checkpoint(5, {"accountant": accountant.state_dict()}))
    restored = RDPAccountant()
    restored.load_state_dict(ckpt.load(path).strategy_state["accountant"])
    assert restored.get_epsilon(delta=1e-5) == accountant.get_epsilon(delta=1e-5)


def test_rng_states_round_trip():
    import random

    import torch

    state = ckpt.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.restore_rng(pickle.loads(pickle.dumps(state)))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_resume_refuses_changed_settings_but_allows_more_rounds():
    from runconfig.plain import to_plain

    saved = to_plain(compose(["+fleet=8dev_test"]))
    ckpt.check_compatible(saved, to_plain(compose(["+fleet=8dev_test", "rounds=20", "resume=true"])))
    with pytest.raises(ConfigError, match=r"client\.lr"):
        ckpt.check_compatible(saved, to_plain(compose(["+fleet=8dev_test", "client.lr=0.1"])))


def test_resume_names_what_is_missing(tmp_path):
    s = compose(["+fleet=8dev_test", "resume=true", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"])
    with pytest.raises(ConfigError, match="no unfinished run with a checkpoint"):
        ckpt.resolve_resume(s)
    s = compose(["+fleet=8dev_test", f"resume={tmp_path}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"])
    with pytest.raises(ConfigError, match="no latest.ckpt"):
        ckpt.resolve_resume(s)
    assert ckpt.resolve_resume(compose(["+fleet=8dev_test"])) is None


def test_resume_finds_the_checkpoint_by_path_run_id_or_latest_unfinished_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    path = tmp_path / "out" / "checkpoint" / ckpt.FILENAME
    ckpt.save(path, make_checkpoint(2))
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("edgefleet")).info.run_id
    client.set_tag(run_id, ckpt.RUN_TAG, str(path))

    def resolve(value):
        return ckpt.resolve_resume(compose(["+fleet=8dev_test", f"resume={value}", f"tracking.uri={uri}"]))

    assert resolve(tmp_path / "out") == path and resolve(path) == path
    assert resolve(run_id) == path and resolve("true") == path
    client.set_terminated(run_id)  # a finished run is no longer "the one to resume"...
    with pytest.raises(ConfigError, match="no unfinished run"):
        resolve("true")
    assert resolve(run_id) == path  # ...but it can be extended by its id
    with pytest.raises(ConfigError, match="neither a checkpoint path nor an MLflow run id"):
        resolve("0123abcd")


# ------------------------------------------------------------------ config validation
@pytest.mark.parametrize(
    "overrides, key",
    [
        (["fleet.classes.pixel_8.failure_rate=1.0"], "fleet.classes.pixel_8.failure_rate"),
        (["federation.deadline_s=0"], "federation.deadline_s"),
        (["federation.over_selection=2.0"], "federation.over_selection"),
        (["federation.min_replies=9"], "federation.min_replies"),
        (["federation.on_short_round=wait"], "federation.on_short_round"),
        (["federation.max_retries=-1"], "federation.max_retries"),
        (["federation.round_timeout_s=0"], "federation.round_timeout_s"),
        (["validation.norm_outlier_factor=0.5"], "validation.norm_outlier_factor"),
        (["validation.max_message_mb=0"], "validation.max_message_mb"),
        (["aggregation.rule=median"], "aggregation.rule"),
        (["aggregation.rule=krum", "aggregation.num_malicious=1"], "aggregation.num_malicious"),
        (["aggregation.trim_fraction=0.5"], "aggregation.trim_fraction"),
        (["faults.inject={9:nan}"], "faults.inject.9"),
        (["faults.inject={1:explode}"], "faults.inject.1"),
        (["method.name=nope"], "method.name"),
        (["client.trainer=nope"], "client.trainer"),
        (["fleet.classes.pixel_8.trainer=nope"], "fleet.classes.pixel_8.trainer"),
        (["model.pretrain.warmup_steps=500"], "model.pretrain.warmup_steps"),
        (["data=hf", "data.name=json", "data.partitioner=zipf"], "data.partitioner"),
        (["data=hf"], "data.name"),  # a value the chosen option requires (???) is never silently defaulted
        (["method.lora.dropout=1.5"], "method.lora.dropout"),
        (["seed=-1"], "seed"),
    ],
)
def test_bad_fault_settings_name_the_key_and_the_fix(overrides, key):
    with pytest.raises(ConfigError, match=rf"'{key}'.*Fix: "):
        compose(["+fleet=8dev_test", "model=tiny-llama", "simulation=ray", *overrides])


def test_fault_settings_that_make_sense_validate():
    s = compose(["+fleet=8dev_test", "federation.deadline_s=30", "federation.over_selection=0.5",
                 "federation.min_replies=2", "aggregation.rule=multikrum", "aggregation.num_to_select=2",
                 "faults.inject={0:raise,3:nan}"])
    assert s.federation.deadline_s == 30 and s.faults.inject == {0: "raise", 3: "nan"}
    assert Path(ckpt.checkpoint_path(s)).name == ckpt.FILENAME
