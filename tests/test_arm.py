"""The ClientApp on aarch64 (issue 23).

``test_arm_device_joins_tls_superlink_and_trains`` (marker ``arm``) runs ``python -m benchmarks.arm``: an arm64
Debian userland under qemu user-mode emulation, the client installed there by scripts/install_device.sh, two
emulated SuperNodes (backprop LoRA, ZeroQAT on a packed base) and one native SuperNode in a 2-round lab3 run
behind a TLS SuperLink with SuperNode authentication. It is deselected by default (pyproject addopts
``-m 'not arm'``): the first run builds the userland and installs torch under emulation, and every emulated
ClientApp imports torch under qemu. Run it with ``pytest -m arm tests/test_arm.py``.
The other tests here are fast and run by default.
"""

import json
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

from benchmarks.arm_userland import REPO, device_requirements


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_device_extra_keeps_the_projects_pins_and_leaves_the_server_parts_out():
    deps = {d.split("==")[0].split(">=")[0].split("[")[0]: d for d in _project()["dependencies"]}
    device = _project()["optional-dependencies"]["device"]
    for req in device:
        name = req.split("==")[0].split(">=")[0]
        assert name in deps, f"{req} is not a project dependency"
        assert deps[name].replace("[simulation]", "") == req, (req, deps[name])
    names = {r.split("==")[0].split(">=")[0] for r in device}
    assert not names & {"mlflow", "opacus", "ray", "datasets", "flwr-datasets", "dp-accounting", "torch"}
    assert device_requirements()[0] == deps["torch"]  # the userland gets the project's torch pin


def test_install_device_needs_python_311_and_says_so():
    proc = subprocess.run(["bash", str(REPO / "scripts/install_device.sh")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHON": "/nonexistent/python3"})
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error:") and "Python >= 3.11" in line


@pytest.mark.arm
@pytest.mark.timeout(3 * 3600)
def test_arm_device_joins_tls_superlink_and_trains(tmp_path):
    for tool, package in (("qemu-aarch64-static", "qemu-user-static"), ("mmdebstrap", "mmdebstrap")):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}: apt-get install {package} (or run bash scripts/arm_check.sh)")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.arm", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=3 * 3600 - 60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    result = json.loads((tmp_path / "arm.json").read_text())
    assert result["superlink_tls"] is True and result["run_status"] == "finished:completed"
    assert result["replies_per_round"] == {"1": 3, "2": 3}  # every device's update aggregated, both rounds
    emulated = [d for d in result["devices"] if d["emulated"]]
    assert [d["machine"] for d in emulated] == ["aarch64", "aarch64"]  # as the device's own Python reports it
    assert {d["trainer"] for d in emulated} == {"lora_backprop", "zeroqat"}
    for device in result["devices"]:
        assert device["rounds_ok"] == 2 and len(device["round_s"]) == 2, device
    assert all(d["install_s"] > 0 for d in emulated)
