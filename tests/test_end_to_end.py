"""A real Flower simulation of a small fleet through the Hydra entry point, checked through MLflow."""

import json

import pytest
from mlflow.tracking import MlflowClient
from peft import PeftModel

from conftest import run_cli
from models.base_checkpoint import base_dir, load_base_model
from runconfig.load import compose

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, fast_overrides):
    workdir = tmp_path_factory.mktemp("run")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    args = ["-m", "simulations.run", "+fleet=8dev_test", "rounds=2", f"tracking.uri={uri}",
            f"hydra.run.dir={workdir / 'out'}", "client.local_steps=3", *fast_overrides]
    proc = run_cli(args, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, uri, proc


def test_mlflow_run_has_params_metrics_and_artifacts(finished_run):
    workdir, uri, _ = finished_run
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("edgefleet").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["fleet.size"] == "8"
    assert run.data.params["method.lora.rank"] == "8"
    for key in ("eval/global_ppl", "eval/global_accuracy", "eval/global_loss"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == [0, 1, 2], key
    for key in ("train/loss", "eval/fed_ppl", "clock/sim_round_s", "clock/sim_time_s", "comm/bytes_up",
                "comm/bytes_down", "fleet/replies", "timing/overhead_share"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2], key
    replies = [m.value for m in client.get_metric_history(run.info.run_id, "fleet/replies")]
    assert all(1 <= r <= 4 for r in replies)  # cohort of 4, some phones may be offline
    sim = [m.value for m in client.get_metric_history(run.info.run_id, "clock/sim_time_s")]
    assert 0 < sim[0] < sim[1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "config", "summary.json"} <= artifacts
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["mlflow_run_id"] == run.info.run_id


def test_saved_adapter_loads_with_peft(finished_run, fast_overrides, tmp_path):
    _, uri, _ = finished_run
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("edgefleet").experiment_id])
    local = client.download_artifacts(run.info.run_id, "adapter", str(tmp_path))
    settings = compose(["+fleet=8dev_test", *fast_overrides])
    model = PeftModel.from_pretrained(load_base_model(base_dir(settings)), local)
    assert any("lora_B" in name and p.abs().sum() > 0 for name, p in model.named_parameters())


def test_generations_put_base_and_final_model_side_by_side(finished_run, fast_overrides, tmp_path):
    from models.base_checkpoint import load_corpus
    from models.generation import greedy, held_out_prompts

    _, uri, _ = finished_run
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("edgefleet").experiment_id])
    record = json.loads(open(client.download_artifacts(run.info.run_id, "generations.json", str(tmp_path))).read())
    assert "| prompt | base model | fine-tuned" in open(
        client.download_artifacts(run.info.run_id, "generations.md", str(tmp_path))).read()
    settings = compose(["+fleet=8dev_test", *fast_overrides])
    corpus = load_corpus(settings)
    prompts = held_out_prompts(corpus, settings.tracking.generations)
    assert [r["prompt"] for r in record["rows"]] == prompts and len(prompts) == 3
    tok = corpus.tokenizer
    held_out = tok.decode(corpus.global_test_ids.tolist())
    assert all(p and p in held_out for p in prompts)  # taken from the held-out plays
    # "base" is the base checkpoint's own greedy text, "fine_tuned" the logged final adapter's
    base = load_base_model(base_dir(settings))
    assert [greedy(base, tok, p, record["max_new_tokens"]) for p in prompts] == [r["base"] for r in record["rows"]]
    tuned = PeftModel.from_pretrained(load_base_model(base_dir(settings)),
                                      client.download_artifacts(run.info.run_id, "adapter", str(tmp_path / "a")))
    assert [greedy(tuned, tok, p, record["max_new_tokens"]) for p in prompts] == [
        r["fine_tuned"] for r in record["rows"]]


def test_console_is_a_progress_bar_not_a_log_wall(finished_run):
    _, _, proc = finished_run
    text = proc.stdout + proc.stderr
    assert "federated rounds" in text
    assert "DEBUG" not in text and "INFO" not in text and "Traceback" not in text


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no fleet given"),
        (["+fleet=80dev", "federation.cohort_size=500"], "larger than the fleet"),
        (["+fleet=80dev", "fleet.classes.jetson_tx2.memory_gb=0.001", "fleet.classes.jetson_xavier_nx.memory_gb=0.001",
          "fleet.classes.jetson_agx_xavier.memory_gb=0.001", "fleet.classes.pixel_8.memory_gb=0.001",
          "fleet.classes.oneplus_12.memory_gb=0.001"], "does not fit any device"),
    ],
)
def test_bad_input_is_one_clear_message(args, message, tmp_path, fast_overrides):
    proc = run_cli(["-m", "simulations.run", *args, *fast_overrides, f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_fleet_lists_options(tmp_path):
    proc = run_cli(["-m", "simulations.run", "+fleet=nope"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "80dev" in proc.stderr and "Traceback" not in proc.stderr
