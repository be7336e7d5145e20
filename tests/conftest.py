import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Small, quick settings shared by tests that build real data and models: the 3.4M tiny-llama, pretrained briefly
# (the default run fine-tunes the real SmolLM2-135M, far too slow for the suite; tests/test_gguf_model.py covers it),
# on the engine the tests were written for (the default is simulation=fast; tests that want it say so after these).
FAST = ["model=tiny-llama", "simulation=ray", "model.pretrain.steps=20", "model.pretrain.warmup_steps=2",
        "data.central_eval_windows=16"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache (tokenizer, corpus, base checkpoints) for the whole test session."""
    return tmp_path_factory.mktemp("edgefleet-cache")


@pytest.fixture(scope="session")
def fast_overrides(cache_dir) -> list[str]:
    return [f"cache_dir={cache_dir}", *FAST]


def run_cli(args: list[str], cwd: Path, timeout: int = 1500, env_extra: dict | None = None):
    import subprocess

    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
