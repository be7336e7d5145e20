"""Issue 7: one command runs the comparison (resumable), groups it in MLflow, writes docs and plots; the MLflow
UI shows it in a real headless Chromium."""

import contextlib
import shutil
import socket
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, run_cli


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


@pytest.mark.browser
def test_mlflow_ui_shows_run_metrics_and_plots(comparison, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (.ci/run installs it)"
    work, uri, _ = comparison
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("cmp-test")
    parent = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("edgefleet_role")][0]
    child = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "fedavg_lora-seed0"][0]
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(1)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{base}/#/experiments/{exp.experiment_id}/runs/{child.info.run_id}", timeout=60000)
            page.get_by_text("fedavg_lora-seed0").first.wait_for(timeout=60000)
            page.get_by_text("eval/global_ppl").first.wait_for(timeout=60000)
            page.screenshot(path=str(tmp_path / "mlflow_run.png"), full_page=True)
            page.goto(f"{base}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}/artifacts",
                      timeout=60000)
            page.get_by_text("plots").first.wait_for(timeout=60000)
            page.get_by_text("plots").first.click()
            page.get_by_text("quality_vs_time.png").first.wait_for(timeout=60000)
            page.get_by_text("quality_vs_time.png").first.click()
            page.locator("img[src^='blob:']").first.wait_for(timeout=60000)  # the plot itself is rendered
            page.screenshot(path=str(tmp_path / "mlflow_plots.png"), full_page=True)
            browser.close()
        assert (tmp_path / "mlflow_run.png").stat().st_size > 10000
        print(f"screenshots: {tmp_path}")
    finally:
        import os
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
