"""Issue 21: every trainer follows the model's device and dtype; the GPU benchmark's entry point.

The CPU cases run everywhere (a model on ``torch.device("meta")`` or with a bf16 base stands in for a GPU: a
tensor created on the CPU next to it is caught); the CUDA cases skip without a GPU and run in
scripts/gpu_check.sh on a lent one. Nothing here imports flwr, mlflow, opacus or hydra at module level (the GPU
machine has none of them).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.accelerator
REPO = Path(__file__).resolve().parents[1]
NEEDS_CUDA = pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")

# Modules the lent GPU machine does not have: importing the benchmark must not need them.
_BLOCKED = ("flwr", "mlflow", "opacus", "hydra", "dp_accounting", "ray")
_BLOCKER = f"""
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {_BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named '{{name}}' (blocked: not on the GPU machine)", name=name)
for name in {_BLOCKED!r}:
    sys.modules[name] = None  # importlib.util.find_spec(name) -> None, as when it is not installed
sys.meta_path.insert(0, Blocked())
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", _BLOCKER + code, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_gpu_benchmark_imports_without_flwr_mlflow_opacus_hydra():
    done = _run("import benchmarks.gpu as g, client.trainers, client.cohort, client.runtime\n"
                "import client.trainers.zeroqat, client.trainers.fedspine_prune, privacy.dpsgd_trainer\n"
                "print('imported')\n"
                "import flwr\n")
    # everything before the last line imported; the last one shows the blocker works
    assert done.stdout.strip() == "imported", done.stderr
    assert "ModuleNotFoundError" in done.stderr and "flwr" in done.stderr, done.stderr


@pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="checks the no-CUDA exit")
def test_gpu_benchmark_without_cuda_exits_2_with_one_line():
    done = _run("import runpy, sys; sys.argv = ['benchmarks.gpu', '--quick']\n"
                "runpy.run_module('benchmarks.gpu', run_name='__main__')")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "CUDA" in done.stderr, done.stderr
