"""The README's `flwr run` path, run as written: its bash block starts a local simulation SuperLink, runs the
app for 2 rounds on the 8-device test fleet, and stops the SuperLink.

Offline means no `uv sync`: a `uv` that records its calls and fails comes first on PATH, and the variable that
prevents it is only what the README's own lines set. The test adds its own Hydra overrides (quick settings, a
temporary MLflow store), its own FLWR_HOME and free ports for the local SuperLink, so nothing touches ~/.flwr
or a SuperLink the user runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess

import httpx
import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO
from deploy_lab import free_port, wait_for
from runconfig.load import compose
from server.app import FLWR_OUTPUT_DIR
from server.preflight import prepare
from tracking.mlflow_tracker import ui_link

pytestmark = pytest.mark.deployment

RUN_TIMEOUT_S = 600


def readme_flwr_lines() -> list[str]:
    """The bash block after the README's sentence that introduces Flower's CLI."""
    text = (REPO / "README.md").read_text()
    after = text.split("The same app runs through Flower's CLI", 1)[1]
    block = after.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def with_overrides(line: str, extra: list[str]) -> str:
    """The README's `flwr run` line with the test's overrides appended inside its `overrides="..."`."""
    new, count = re.subn(r'overrides="([^"]*)"', lambda m: f'overrides="{m.group(1)} {" ".join(extra)}"', line)
    assert count == 1, line
    return new


def processes_of(flwr_home: str) -> list[psutil.Process]:
    """This test's Flower processes: those whose environment carries its FLWR_HOME."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("FLWR_HOME") == flwr_home:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout


def test_readme_flwr_commands_run_offline_and_write_under_outputs(tmp_path, fast_overrides):
    lines = readme_flwr_lines()
    [run_line] = [i for i, line in enumerate(lines) if line.startswith("flwr run ")]
    [stop_line] = [i for i, line in enumerate(lines) if line.startswith("pkill ")]
    assert stop_line == len(lines) - 1
    readme_overrides = re.search(r'overrides="([^"]*)"', lines[run_line]).group(1).split()
    assert "model=tiny-llama" in readme_overrides  # the example stays quick whatever the default model is
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    extra = [*fast_overrides, "client.local_steps=1", "federation.eval_cohort_size=0", f"tracking.uri={uri}"]
    settings = compose([*readme_overrides, *extra])
    prepare(settings, show_progress=False)  # the base model, cached once
    # artifacts in the test's folder (a new sqlite store's default is ./mlruns of the SuperLink's directory)
    MlflowClient(tracking_uri=uri).create_experiment(settings.tracking.experiment, str(tmp_path / "artifacts"))
    lines[run_line] = with_overrides(lines[run_line], extra)

    bin_dir, home = tmp_path / "bin", str(tmp_path / "flwr-home")
    bin_dir.mkdir()
    uv_calls = tmp_path / "uv_calls"
    (bin_dir / "uv").write_text(f'#!/bin/sh\necho "uv $*" >> {uv_calls}\nexit 1\n')
    (bin_dir / "uv").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"}
    http_port = free_port()
    env.update(FLWR_HOME=home, FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(http_port),
               FLWR_LOCAL_CONTROL_API_PORT=str(free_port()), FLWR_TELEMETRY_ENABLED="0",
               PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", PYTHONUNBUFFERED="1")

    def bash(script_lines: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-ec", "\n".join(script_lines)], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=timeout)

    def superlink_up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=2).is_success
        except httpx.HTTPError:
            return False

    before = git_status()
    out_dir = None
    try:
        ran = bash(lines[:stop_line], RUN_TIMEOUT_S)
        log = ran.stdout + ran.stderr
        assert ran.returncode == 0, log[-4000:]
        assert not uv_calls.exists(), uv_calls.read_text()
        flwr_run_id = re.search(r"Successfully started run (\d+)", log).group(1)
        out_dir = REPO / FLWR_OUTPUT_DIR / flwr_run_id
        summary = json.loads((out_dir / "summary.json").read_text())
        assert summary["rounds"] == 2 and (out_dir / "checkpoint" / "latest.ckpt").exists()
        assert f"summary: {out_dir / 'summary.json'}" in log
        assert git_status() == before  # summary and checkpoint are git-ignored
        client = MlflowClient(tracking_uri=uri)
        run = client.get_run(summary["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.params["model.name"] == "tiny-llama"
        assert run.data.tags["mlflow.source.name"] == "flwr run (server.app:app)"
        assert ui_link(uri, run.info.experiment_id) in log  # the run printed its MLflow link
        assert superlink_up(), "the local SuperLink keeps running after `flwr run` (the README says so)"

        stopped = bash(lines[stop_line:], 60)
        assert stopped.returncode == 0, stopped.stderr
        wait_for(lambda: not superlink_up() and not processes_of(home), 60, "the SuperLink and its children to exit")
    finally:
        for proc in processes_of(home):  # only this test's: a failed run must not leave a SuperLink behind
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if out_dir is not None:
            shutil.rmtree(out_dir, ignore_errors=True)
