"""Issue 7: one command runs the comparison (resumable), groups it in MLflow, writes docs and plots; the MLflow
UI shows it in a real headless Chromium."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from conftest import REPO, run_cli
from tracking import glossary
from tracking.mlflow_tracker import ui_base, ui_link


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, fast_overrides):
    work = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    (work / "README.md").write_text("# test readme\n")
    args = ["-m", "simulations.compare", "fleet_name=8dev_test", "~methods", "+methods={fedavg_lora:[]}", "seeds=[0,1]",
            "rounds=2", f"tracking_uri={uri}",
            f"results_dir={work / 'results'}", f"docs_file={work / 'docs' / 'results.md'}",
            f"readme_file={work / 'README.md'}", "experiment=cmp-test",
            "overrides=[" + ",".join(f"'{o}'" for o in [*fast_overrides, "client.local_steps=2"]) + "]"]
    (work / "docs").mkdir()
    first = run_cli(args, cwd=REPO)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    return work, uri, args


def test_comparison_groups_runs_and_writes_docs(comparison):
    work, uri, _ = comparison
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("cmp-test")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("edgefleet_role") == "comparison"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and len(children) == 2
    assert {r.data.tags["seed"] for r in children} == {"0", "1"}
    # The compare view is meaningful: the same metric names and steps in every child run.
    steps = [[m.step for m in client.get_metric_history(r.info.run_id, "eval/global_ppl")] for r in children]
    assert steps == [[0, 1, 2], [0, 1, 2]]
    doc = (work / "docs" / "results.md").read_text()
    assert "| fedavg_lora | 2 |" in doc and "quality_vs_time.png" in doc
    assert (work / "docs" / "results" / "quality_vs_time.png").stat().st_size > 5000
    assert "plots" in {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    readme = (work / "README.md").read_text()
    assert "<!-- results:start -->" in readme and "| fedavg_lora | 2 |" in readme


def test_partial_sweep_resumes_without_rerunning(comparison):
    work, _, args = comparison
    summary = work / "results" / "fedavg_lora-seed0" / "summary.json"
    before = summary.stat().st_mtime
    second = run_cli(args, cwd=REPO)
    assert second.returncode == 0, second.stderr[-2000:]
    assert summary.stat().st_mtime == before


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runs_read_as_training_runs(comparison):
    """Source, user, a description of the metrics, and the adapter as the run's output model (MLflow's UI lists
    a run without an output model as an evaluation run)."""
    work, uri, _ = comparison
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("cmp-test")
    runs = client.search_runs([exp.experiment_id])
    child = [r for r in runs if r.info.run_name == "fedavg_lora-seed0"][0]
    parent = [r for r in runs if r.data.tags.get("edgefleet_role") == "comparison"][0]
    tags = child.data.tags
    assert tags["mlflow.source.name"] == "python -m simulations.run" and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"] and "tracking.run_name=fedavg_lora-seed0" in tags["command"]
    assert parent.data.tags["mlflow.source.name"] == "python -m simulations.compare" and parent.data.tags["mlflow.user"]
    assert "**tiny-llama**" in tags["mlflow.note.content"] and "`cost/bytes_up`" in tags["mlflow.note.content"]
    unexplained = [k for r in (child, parent) for k in r.data.metrics if not glossary.explained(k)]
    assert unexplained == [], f"metrics missing from tracking/glossary.py: {unexplained}"
    assert "metrics_glossary.md" in {a.path for a in client.list_artifacts(child.info.run_id)}
    [output] = child.outputs.model_outputs
    assert output.step == 2
    model = client.get_logged_model(output.model_id)
    assert model.source_run_id == child.info.run_id and model.status == LoggedModelStatus.READY
    assert "adapter_config.json" in {a.path for a in client.list_logged_model_artifacts(model.model_id)}


@pytest.fixture(scope="module")
def mlflow_ui(comparison):
    """``mlflow server`` on the comparison's store, and a headless Chromium page."""
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (.ci/run installs it)"
    _, uri, _ = comparison
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(1)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            yield f"http://127.0.0.1:{port}", browser.new_page(viewport={"width": 1400, "height": 900})
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine: the server's workers are slow to go
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


@pytest.mark.browser
def test_mlflow_ui_shows_run_metrics_and_plots(comparison, mlflow_ui, tmp_path):
    work, uri, _ = comparison
    base, page = mlflow_ui
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("cmp-test")
    parent = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("edgefleet_role")][0]
    child = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "fedavg_lora-seed0"][0]
    page.goto(f"{base}/#/experiments/{exp.experiment_id}/runs/{child.info.run_id}", timeout=60000)
    page.get_by_text("fedavg_lora-seed0").first.wait_for(timeout=60000)
    page.get_by_text("eval/global_ppl").first.wait_for(timeout=60000)
    page.screenshot(path=str(tmp_path / "mlflow_run.png"), full_page=True)
    page.goto(f"{base}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}/artifacts", timeout=60000)
    page.get_by_text("plots").first.wait_for(timeout=60000)
    page.get_by_text("plots").first.click()
    page.get_by_text("quality_vs_time.png").first.wait_for(timeout=60000)
    page.get_by_text("quality_vs_time.png").first.click()
    page.locator("img[src^='blob:']").first.wait_for(timeout=60000)  # the plot itself is rendered
    page.screenshot(path=str(tmp_path / "mlflow_plots.png"), full_page=True)
    assert (tmp_path / "mlflow_run.png").stat().st_size > 10000
    print(f"screenshots: {tmp_path}")


@pytest.mark.browser
def test_printed_links_open_the_runs_list_and_a_filled_run_page(comparison, mlflow_ui, tmp_path):
    """The links a run prints (tracking.mlflow_tracker.ui_link) open MLflow's model-training view: the Runs list
    with the run in it, not the GenAI view's traces; the run page names its creator and source."""
    _, uri, _ = comparison
    base, page = mlflow_ui
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("cmp-test")
    child = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "fedavg_lora-seed0"][0]
    page.goto(ui_link(uri, exp.experiment_id).replace(ui_base(uri)[1], base), timeout=60000)
    parent = page.get_by_role("gridcell", name="cmp-test").first  # the comparison's row in the Runs table
    parent.wait_for(timeout=90000)
    parent.locator("button").first.click()  # unfold its child runs
    page.get_by_role("gridcell", name="fedavg_lora-seed0").first.wait_for(timeout=60000)
    page.screenshot(path=str(tmp_path / "mlflow_runs_list.png"), full_page=True)
    assert "workflowType=machine_learning" in page.url and "/runs" in page.url
    assert page.get_by_text("Evaluation runs").count() == 0  # the GenAI view's side bar is not shown
    page.goto(ui_link(uri, exp.experiment_id, child.info.run_id).replace(ui_base(uri)[1], base), timeout=60000)
    page.get_by_text("python -m simulations.run").first.wait_for(timeout=60000)  # Source
    page.get_by_text(child.data.tags["mlflow.user"], exact=True).first.wait_for(timeout=60000)  # Created by
    page.get_by_text("cost/bytes_up").first.wait_for(timeout=60000)  # the description's glossary
    page.screenshot(path=str(tmp_path / "mlflow_run_page.png"), full_page=True)
    if page.get_by_text("Show more").count():
        page.get_by_text("Show more").first.click()  # the whole description
        page.screenshot(path=str(tmp_path / "mlflow_run_description.png"), full_page=True)
    print(f"screenshots: {tmp_path}")
