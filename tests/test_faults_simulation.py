"""Faults in real Flower simulations through the Hydra entry point.

One uninterrupted run with five faulty devices (raise, NaN, wrong shape, huge norm, stale round) and one
late one; then the same run SIGKILLed after its first checkpoint and resumed: the resumed run must end with
the same adapter and the same metrics, in the same MLflow run.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, run_cli
from server import checkpoint as ckpt

pytestmark = pytest.mark.faults

ROUNDS = 2
FAULTY = [
    "federation.cohort_size=8",  # every device trains every round: the counts are exact
    *[f"fleet.classes.{c}.availability=1" for c in
      ("jetson_tx2", "jetson_xavier_nx", "jetson_agx_xavier", "pixel_8", "oneplus_12")],
    "faults.inject={0:raise,1:nan,2:shape,3:norm,4:stale,5:slow}",
    "federation.deadline_s=60",  # a real reply takes about a simulated second; 'slow' takes hours
    "client.local_steps=3",
    f"rounds={ROUNDS}",
]
# metrics that do not depend on wall-clock measurements
DETERMINISTIC = ("eval/global_loss", "eval/global_accuracy", "train/loss", "eval/fed_loss", "fleet/replies",
                 "fleet/failures", "fleet/late", "fleet/rejected", "fleet/rejected/nonfinite", "fleet/rejected/shapes",
                 "fleet/rejected/norm_outlier", "fleet/rejected/stale_round")


def cli_args(workdir, uri, fast_overrides, *extra):
    return ["-m", "simulations.run", "+fleet=8dev_test", f"tracking.uri={uri}", *FAULTY, *fast_overrides, *extra]


def only_run(uri):
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("edgefleet").experiment_id])
    return client, run


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fast_overrides):
    workdir = tmp_path_factory.mktemp("reference")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    proc = run_cli(cli_args(workdir, uri, fast_overrides, f"hydra.run.dir={workdir / 'out'}"), cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, uri


def test_faulty_devices_are_rejected_counted_and_the_run_completes(reference):
    workdir, uri = reference
    client, run = only_run(uri)
    assert run.info.status == "FINISHED"
    rid = run.info.run_id
    steps = list(range(1, ROUNDS + 1))
    expected = {
        "fleet/replies": 2,  # devices 6 and 7
        "fleet/failures": 1,  # raise
        "fleet/late": 1,  # slow
        "fleet/rejected": 4,
        "fleet/rejected/nonfinite": 1,
        "fleet/rejected/shapes": 1,
        "fleet/rejected/norm_outlier": 1,
        "fleet/rejected/stale_round": 1,
        "fleet/skipped_round": 0,
        "fleet/attempts": 1,
    }
    for key, value in expected.items():
        assert history(client, rid, key) == [(s, value) for s in steps], key
    loss = [v for _, v in history(client, rid, "eval/global_loss")]
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0]  # the good updates still trained the model
    sim = [v for _, v in history(client, rid, "clock/sim_round_s")]
    assert sim == [60.0] * ROUNDS  # a reply was missing every round: the server waited for the deadline
    events = json.loads(Path(client.download_artifacts(rid, "faults.json", str(workdir))).read_text())["events"]
    assert {(e["round"], e["device"], e["outcome"], e["reason"]) for e in events} == {
        (r, d, outcome, reason) for r in steps for d, outcome, reason in [
            (0, "failed", "error"), (1, "rejected", "nonfinite"), (2, "rejected", "shapes"),
            (3, "rejected", "norm_outlier"), (4, "rejected", "stale_round"), (5, "late", "deadline")]
    }
    state = ckpt.load(workdir / "out" / "checkpoint" / ckpt.FILENAME)
    assert state.server_round == ROUNDS and state.strategy_state["model_version"] == ROUNDS
    assert state.mlflow_run_id == rid


def test_killed_server_resumes_to_the_same_adapter_and_metrics(reference, tmp_path, fast_overrides):
    ref_dir, ref_uri = reference
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = tmp_path / "first" / "checkpoint" / ckpt.FILENAME
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    server = subprocess.Popen(
        [sys.executable, *cli_args(tmp_path, uri, fast_overrides, f"hydra.run.dir={tmp_path / 'first'}")],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not path.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(server.pid, signal.SIGKILL)  # the server process, mid-run, without a chance to clean up
        server.wait()
    finally:
        try:
            os.killpg(server.pid, signal.SIGKILL)  # Ray helpers the server started (its own session)
        except ProcessLookupError:
            pass
    assert server.returncode == -signal.SIGKILL
    crashed_at = ckpt.load(path).server_round
    assert 1 <= crashed_at < ROUNDS
    client, run = only_run(uri)
    assert run.info.status == "RUNNING"  # killed: nobody marked it finished

    proc = run_cli(cli_args(tmp_path, uri, fast_overrides, "resume=true", f"hydra.run.dir={tmp_path / 'second'}"),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    client, resumed = only_run(uri)  # still one run: the same one went on
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["edgefleet.resumed_after_round"] == str(crashed_at)
    ref_client, ref_run = only_run(ref_uri)
    for key in DETERMINISTIC:
        got, want = history(client, run.info.run_id, key), history(ref_client, ref_run.info.run_id, key)
        assert [s for s, _ in got] == [s for s, _ in want], key  # every round once: no gap, no duplicate
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-9), key

    final, ref_final = ckpt.load(path), ckpt.load(ref_dir / "out" / "checkpoint" / ckpt.FILENAME)
    assert final.server_round == ROUNDS and final.mlflow_run_id == run.info.run_id
    assert final.arrays.keys() == ref_final.arrays.keys()
    for key, value in ref_final.arrays.items():
        np.testing.assert_allclose(final.arrays[key], value, rtol=1e-6, atol=1e-9, err_msg=key)
    assert final.strategy_state["model_version"] == ref_final.strategy_state["model_version"]
    summary = (tmp_path / "second" / "summary.json").read_text()
    assert f'"rounds": {ROUNDS}' in summary


def test_a_round_without_enough_replies_is_retried_then_skipped_never_hangs(tmp_path, fast_overrides):
    """Every device raises: the round is retried with a fresh cohort, then skipped; the global adapter stays."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["-m", "simulations.run", "+fleet=8dev_test", f"tracking.uri={uri}", "rounds=1", "client.local_steps=1",
            "federation.cohort_size=4", "federation.eval_cohort_size=0", "federation.min_replies=2",
            "federation.on_short_round=retry", "federation.max_retries=1",
            "faults.inject={0:raise,1:raise,2:raise,3:raise,4:raise,5:raise,6:raise,7:raise}",
            *[f"fleet.classes.{c}.availability=1" for c in
              ("jetson_tx2", "jetson_xavier_nx", "jetson_agx_xavier", "pixel_8", "oneplus_12")],
            *fast_overrides, f"hydra.run.dir={tmp_path / 'out'}"]
    proc = run_cli(args, cwd=tmp_path)
    # a run that never aggregated an update ends with one error line and exit 1, not a success (issue 25)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no update was aggregated in 1 round(s)")
    client, run = only_run(uri)
    assert run.info.status == "FAILED"
    rid = run.info.run_id
    assert history(client, rid, "fleet/attempts") == [(1, 2)]
    assert history(client, rid, "fleet/failures") == [(1, 8)]  # 4 devices per attempt
    assert history(client, rid, "fleet/skipped_round") == [(1, 1)]
    assert history(client, rid, "fleet/replies") == [(1, 0)]
    loss = history(client, rid, "eval/global_loss")
    assert loss[0][1] == loss[1][1]  # round 1 changed nothing
