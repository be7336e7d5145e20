"""Nothing let in, nothing lost, nothing leaked (issue 19).

* Property tests (hypothesis): malformed and hostile replies to a real strategy's round are never accepted and
  never raise out of it; honest replies are never rejected, in cohorts of 1 to 80 devices.
* The cases the issue found, one by one: mismatched seed uploads, 10^6 seeds, duplicates, huge weights, a lone
  1e12x update, negative seeds, unasked seed uploads, infinite stalls, a diverged device.
* A round whose aggregation raises is logged failed and the next one runs.
* A resumed DP run draws the same cohorts and noise as the uninterrupted one and never reuses a noise draw.
* Config errors: one line, exit 2, the key and a fix, no output folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import HealthCheck, given, settings, strategies as st

from benchmarks.robustness_cases import MUTATIONS, ROUND, SEED_UPLOAD_ON, WINDOWS, Round, malformed_round
from conftest import run_cli
from protocol.messages import Work, to_array_record

pytestmark = pytest.mark.faults
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True, scope="module")
def task_identity():
    """Messages need a run id (Flower sets it in a running ServerApp)."""
    mp = pytest.MonkeyPatch()
    for name in ("_run_id", "_task_id", "_node_id"):
        mp.setattr(TaskIdentity, name, 1)
    logging.disable(logging.WARNING)  # thousands of expected rejections
    yield
    logging.disable(logging.NOTSET)
    mp.undo()


class HypothesisDraw:
    """The choices a mutation makes, drawn by hypothesis (shrinkable)."""

    def __init__(self, data) -> None:
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def pick(self, options):
        return self.data.draw(st.sampled_from(list(options)))

    def real(self, lo: float, hi: float) -> float:
        return self.data.draw(st.floats(lo, hi, allow_nan=False))


# ------------------------------------------------------------------ properties
@PROPERTY
@given(name=st.sampled_from(sorted(MUTATIONS)), honest=st.integers(0, 4), data=st.data())
def test_no_malformed_reply_is_accepted_and_the_strategy_never_raises(name, honest, data):
    case = malformed_round(name, HypothesisDraw(data), honest)
    if case is None:
        return  # Flower cannot carry it (no device can send it)
    r, messages, allowed = case
    arrays, metrics, accepted = r.aggregate(messages)  # raises = the test fails
    assert accepted.count(0) <= allowed, (name, r.strategy._ledger.checked.rejected)
    assert metrics["fleet/rejected"] >= 1
    if arrays is not None:  # whatever got in cannot move the adapter by more than the honest deltas did
        moved = np.sqrt(sum(float(np.sum((arrays[k].numpy() - v) ** 2)) for k, v in r.strategy._global.items()))
        gnorm = np.sqrt(sum(float(np.sum(v * v)) for v in r.strategy._global.values()))
        assert moved <= 2.0 * gnorm


@PROPERTY
@given(n=st.integers(1, 80), scales=st.lists(st.floats(0.05, 2.0), min_size=80, max_size=80),
       seed=st.integers(0, 2**16), order=st.randoms(use_true_random=False))
def test_honest_replies_are_never_rejected(n, scales, seed, order):
    cohort = sorted(order.sample(range(80), n))
    r = Round.open(cohort)
    messages = [Round.message(r.honest_update(d, scale=scales[d], seed=seed), d) for d in cohort]
    order.shuffle(messages)
    arrays, metrics, accepted = r.aggregate(messages)
    assert accepted == cohort and metrics["fleet/rejected"] == 0
    assert arrays is not None and metrics["fleet/replies"] == n


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(n=st.integers(1, 6), seed=st.integers(0, 2**16), steps=st.integers(1, 8), q=st.integers(1, 2))
def test_honest_seed_uploads_are_never_rejected(n, seed, steps, q):
    r = Round.open(list(range(n)), (*SEED_UPLOAD_ON, f"zeroqat.perturbations={q}"), trainer="zeroqat")
    for work in r.strategy._ledger.work.values():
        work.local_steps = steps
    arrays, metrics, accepted = r.aggregate([Round.message(r.honest_seed_upload(d, seed), d) for d in range(n)])
    assert accepted == list(range(n)) and metrics["fleet/rejected"] == 0 and arrays is not None


# ------------------------------------------------------------------ the cases, one by one
def rejected(r: Round) -> dict[int, str]:
    return {v.device_index: v.reason for v in r.strategy._ledger.checked.rejected}


def test_mismatched_seed_upload_is_rejected_not_raised():
    r = Round.open([0, 1], SEED_UPLOAD_ON, trainer="zeroqat")
    bad = r.honest_seed_upload(0)
    bad.delta["zo.grads"] = bad.delta["zo.grads"][:-1]  # was an IndexError inside validation
    arrays, metrics, accepted = r.aggregate([Round.message(bad, 0), Round.message(r.honest_seed_upload(1), 1)])
    assert accepted == [1] and rejected(r) == {0: "seed_upload"} and arrays is not None


def test_a_million_seeds_are_refused_before_any_replay():
    r = Round.open([0], SEED_UPLOAD_ON, trainer="zeroqat")
    bad = r.honest_seed_upload(0)
    bad.delta = {"zo.seeds": np.arange(10**6, dtype=np.int64).reshape(1000, 1000),
                 "zo.grads": np.ones((1000, 1000), np.float32)}
    start = time.perf_counter()
    r.aggregate([Round.message(bad, 0)])
    assert rejected(r) == {0: "seed_upload"}
    assert time.perf_counter() - start < 5  # a replay would take about 20 minutes


@pytest.mark.parametrize("seeds", ["negative", "int64_min", "other"])
def test_seeds_must_be_those_the_work_implies(seeds):
    r = Round.open([0], SEED_UPLOAD_ON, trainer="zeroqat")
    bad = r.honest_seed_upload(0)
    s = bad.delta["zo.seeds"]
    s[0, 0] = {"negative": -5, "int64_min": np.iinfo(np.int64).min, "other": s[0, 0] + 1}[seeds]
    r.aggregate([Round.message(bad, 0)])
    assert rejected(r) == {0: "seed_upload"}


@pytest.mark.parametrize("overrides,trainer", [((), "zeroqat"), (SEED_UPLOAD_ON, "lora_backprop")])
def test_seed_uploads_only_from_devices_asked_for_one(overrides, trainer):
    asked = Round.open([0], SEED_UPLOAD_ON, trainer="zeroqat")
    upload = asked.honest_seed_upload(0)
    r = Round.open([0], overrides, trainer=trainer)
    r.aggregate([Round.message(upload, 0)])
    assert rejected(r) == {0: "seed_upload"}


def test_one_reply_per_device_per_round_the_first_stands():
    r = Round.open([0, 1])
    first, second = r.honest_update(0, scale=0.1), r.honest_update(0, scale=1.5, seed=9)
    r.aggregate([Round.message(first, 0), Round.message(second, 0), Round.message(r.honest_update(1), 1)])
    accepted = {u.device_index: u for u, _ in r.strategy._ledger.checked.accepted}
    assert sorted(accepted) == [0, 1] and rejected(r) == {0: "duplicate"}
    assert np.array_equal(accepted[0].delta["l0.q.lora_A"], first.delta["l0.q.lora_A"])


def test_a_claimed_weight_cannot_exceed_what_the_device_holds():
    r = Round.open([0, 1])
    greedy = r.honest_update(0)
    greedy.num_examples = 10**9
    r.aggregate([Round.message(greedy, 0), Round.message(r.honest_update(1), 1)])
    assert rejected(r) == {0: "examples"}
    capped = Round.open([0], ("validation.max_examples=50",))  # a deployment's cap, below the known windows
    capped.aggregate([Round.message(capped.honest_update(0), 0)])
    assert rejected(capped) == {0: "examples"}


def test_a_lone_huge_update_cannot_move_the_adapter():
    r = Round.open([0])
    huge = r.honest_update(0)
    huge.delta = {k: v * 1e12 for k, v in huge.delta.items()}
    arrays, metrics, accepted = r.aggregate([Round.message(huge, 0)])
    assert accepted == [] and rejected(r) == {0: "norm"} and arrays is None
    off = Round.open([0], ("validation.norm_bound_factor=null",))  # the bound is what rejects it
    off.aggregate([Round.message(huge, 0)])
    assert [u.device_index for u, _ in off.strategy._ledger.checked.accepted] == [0]


@pytest.mark.parametrize("stall", [float("inf"), float("nan"), -1.0])
def test_a_bad_stall_is_rejected(stall):
    r = Round.open([0])
    u = r.honest_update(0)
    u.metrics["stall_s"] = stall
    r.aggregate([Round.message(u, 0)])
    assert rejected(r) == {0: "metrics"}


def test_a_diverged_device_is_rejected_by_its_own_losses():
    r = Round.open([0, 1])
    diverged = r.honest_update(0)
    diverged.metrics.update(loss_start=4.1, loss_end=19.5)  # perplexity 60 -> 3e8 (a ZeroQAT lr far too large)
    r.aggregate([Round.message(diverged, 0), Round.message(r.honest_update(1), 1)])
    assert rejected(r) == {0: "diverged"}


def test_a_round_whose_aggregation_raises_is_failed_and_the_run_goes_on():
    class Grid:  # answers every train message with an honest reply, as a fleet would
        def send_and_receive(self, messages, timeout):
            replies = []
            for m in messages:
                work = Work.from_config(m.content["config"])
                update = r.honest_update(work.device_index)
                update.server_round, update.model_version = work.server_round, work.model_version
                replies.append(Round.message(update, work.device_index))
            return replies

    r = Round.open(list(range(4)), ("federation.cohort_size=4", "federation.max_retries=0"))
    strategy = r.strategy
    for d in strategy.devices:
        strategy.node_of_device[d.index] = 1000 + d.index
    arrays = to_array_record(strategy._global)
    broken = {"on": True}
    original = type(strategy).aggregate_updates

    def aggregate_updates(self, server_round, updates):
        if broken["on"]:
            raise IndexError("a bug one reply triggers")
        return original(self, server_round, updates)

    strategy.aggregate_updates = aggregate_updates.__get__(strategy)
    version = strategy.counters.model_version
    new, metrics = strategy.train_round(Grid(), ROUND, arrays, None, timeout=10)
    assert new is None and metrics["fleet/round_failed"] == 1 and metrics["fleet/skipped_round"] == 1
    assert strategy.counters.model_version == version
    assert any(e["outcome"] == "round_failed" for e in strategy.fault_log)
    broken["on"] = False
    new, metrics = strategy.train_round(Grid(), ROUND + 1, arrays, None, timeout=10)
    assert new is not None and metrics["fleet/replies"] >= 1 and strategy.counters.model_version == version + 1


# ------------------------------------------------------------------ DP resume
def dp_rounds(strategy, first: int, last: int):
    """Rounds ``first..last`` of a DP strategy's server side: sample the cohort, aggregate honest deltas."""
    outputs = []
    for rnd in range(first, last + 1):
        cohort, _ = strategy.select(rnd, strategy.settings.federation.cohort_size, "train", 100)
        r = Round.open([d.index for d in cohort], strategy=strategy)
        updates = [r.honest_update(d.index, seed=rnd) for d in cohort]
        outputs.append(([d.index for d in cohort], strategy.round_delta(rnd, updates),
                        strategy.privacy.metrics()["privacy/epsilon"]))
    return outputs


class Recording:
    """Records every Gaussian draw of a noise source (what the mechanism adds)."""

    def __init__(self, source, log: list) -> None:
        self.source, self.log = source, log

    def normal(self, shape, std):
        z = self.source.normal(shape, std)
        self.log.append(np.asarray(z).copy())
        return z

    def __getattr__(self, name):
        return getattr(self.source, name)


def dp_strategy(sampling: str):
    from benchmarks.robustness_cases import TOY, global_adapter, settings_for
    from fleet.devices import build_fleet
    from server.strategy import build_strategy

    s = settings_for(("privacy=user_dp", f"privacy.sampling={sampling}", "privacy.noise_multiplier=1.0",
                      "privacy.target_epsilon=null", "federation.cohort_size=8", "rounds=6"))
    strategy = build_strategy(s, build_fleet(s.fleet, s.seed), TOY, 1)
    strategy.known_examples = {d.index: WINDOWS for d in strategy.devices}
    strategy.node_of_device = {d.index: 1000 + d.index for d in strategy.devices}
    strategy._global = global_adapter()
    return strategy


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_a_resumed_dp_run_is_the_same_run_and_never_reuses_noise(sampling, tmp_path):
    from server import checkpoint as ckpt

    whole_noise, resumed_noise = [], []
    whole = dp_strategy(sampling)
    whole.privacy._noise = Recording(whole.privacy._noise, whole_noise)
    uninterrupted = dp_rounds(whole, 1, 6)

    first = dp_strategy(sampling)
    first.privacy._noise = Recording(first.privacy._noise, resumed_noise)
    before = dp_rounds(first, 1, 3)
    path = tmp_path / ckpt.FILENAME  # through the checkpoint file, as a killed run would
    ckpt.save(path, ckpt.Checkpoint(3, first._global, first.get_state(), {}, "run", {}))
    second = dp_strategy(sampling)  # a new process: generators rebuilt from the seed
    second.set_state(ckpt.load(path).strategy_state)
    second.privacy._noise = Recording(second.privacy._noise, resumed_noise)
    after = dp_rounds(second, 4, 6)

    for (c1, out1, eps1), (c2, out2, eps2) in zip(uninterrupted, before + after):
        assert c1 == c2 and eps1 == eps2  # the same cohorts, the same epsilon
        assert all(np.array_equal(out1[k], out2[k]) for k in out1)  # the same noise, the same result
    assert len(resumed_noise) == len(whole_noise) > 0
    flat = [z.reshape(-1) for z in resumed_noise]
    for i in range(len(flat)):  # no Gaussian draw is ever used twice, across the resume included
        for j in range(i):
            n = min(flat[i].size, flat[j].size)
            assert not np.allclose(flat[i][:n], flat[j][:n])
    second.settings = dataclasses.replace(second.settings, output_dir=str(tmp_path))
    second.privacy.save_state()  # the artifact MLflow shows holds the accountant, not the noise stream
    assert "dp_rng" not in json.loads((tmp_path / "privacy_state.json").read_text())


# ------------------------------------------------------------------ config errors
@pytest.mark.parametrize("args,key", [
    (["method=nope"], "'method'"),
    (["cost=nope"], "'cost'"),
    (["+fleet=8dev_test", "simulation=nope"], "'simulation'"),
    (["+fleet=8dev_test", "model=hf", "model.name_or_path=/nonexistent"], "'model.name_or_path'"),
    (["+fleet=8dev_test", "client.lr=abc"], "'client.lr'"),
    (["+fleet=8dev_test", "model=hf"], "'model.name_or_path'"),
])
def test_config_errors_are_one_line_exit_2_and_leave_no_output_folder(tmp_path, args, key):
    proc = run_cli(["-m", "simulations.run", *args], cwd=tmp_path, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and key in lines[0] and "Fix:" in lines[0], lines
    assert list(tmp_path.iterdir()) == []  # no outputs/<date>/<time>/.hydra
