"""A real Flower simulation (Ray) with DP-DyLoRA on: epsilon after each round in MLflow, accountant saved."""

import json

import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli

pytestmark = pytest.mark.privacy


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory, fast_overrides):
    workdir = tmp_path_factory.mktemp("dp-run")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    args = ["-m", "simulations.run", "+fleet=8dev_test", "rounds=2", "client.local_steps=2", "method=dp_dylora",
            "privacy.target_epsilon=6", "privacy.noise_placement=client", "privacy.record.enabled=true",
            "method.dylora.eval_ranks=[2,8]", f"tracking.uri={uri}", f"hydra.run.dir={workdir / 'out'}",
            *fast_overrides]
    proc = run_cli(args, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, uri


def test_epsilon_is_logged_each_round_and_stays_within_target(dp_run):
    workdir, uri = dp_run
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("edgefleet").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["privacy.mode"] == "user"
    eps = client.get_metric_history(run.info.run_id, "privacy/epsilon")
    assert [m.step for m in eps] == [1, 2]
    assert 0 < eps[0].value < eps[1].value <= 6.0
    record = client.get_metric_history(run.info.run_id, "privacy/record_epsilon_max")
    assert record and all(m.value > 0 for m in record)  # the record-level guarantee, reported separately
    ranks = [m.value for m in client.get_metric_history(run.info.run_id, "dylora/rank")]
    assert len(ranks) == 2 and all(1 <= r <= 8 for r in ranks)
    for key in ("eval/global_accuracy_r2", "eval/global_accuracy_r8", "eval/global_ppl_r2"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [2], key
    local = client.download_artifacts(run.info.run_id, "privacy/accountant.json", str(workdir))
    state = json.loads(open(local).read())
    assert sum(h[2] for h in state["user"]["accountant"]["history"]) == 2
    saved = json.loads((workdir / "out" / "privacy_state.json").read_text())
    assert saved["user"] == state["user"]
