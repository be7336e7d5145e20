"""Peak memory of one training step on the CPU, measured as resident memory in a fresh process.

torch keeps no allocator statistics on the CPU, so the step's peak is read from the kernel: a fresh
``python -m benchmarks.peak_memory '<json spec>'`` imports everything, runs the same trainer once on a tiny
model (so code pages and thread pools the step touches are already resident), hands freed heap back
(``malloc_trim``) and reads its resident set: the base load. It then builds the model of the spec (random
weights; pruned copy, LoRA attached or the W4A8 base packed, as the trainers do), trims again, resets the kernel's
peak-RSS mark (``/proc/self/clear_refs``, 5) and runs the steps. Measured = peak RSS (VmHWM) - base load: the
weights, adapter and optimizer state, and everything the step allocated, as glibc's malloc holds it.

Backprop runs two steps (the second one's forward holds AdamW's moments and the last gradients); ZeroQAT one
SPSA step (two forwards under ``torch.inference_mode``). Linux only (procfs).
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def _trim() -> None:
    import gc

    gc.collect()
    ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def llama_config(spec: dict):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=spec["vocab"], hidden_size=spec["hidden"], intermediate_size=spec["intermediate"],
                       num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
                       num_key_value_heads=spec["kv_heads"], head_dim=spec["head_dim"],
                       max_position_embeddings=max(256, spec["seq"]), tie_word_embeddings=True)


def _pruned(base, level: float):
    import numpy as np

    from pruning.prune import prune_model
    from pruning.structure import Dims, Structure, select

    if level <= 0:
        return base
    model = copy.deepcopy(base)
    dims = Dims.of(base.config)
    rng = np.random.default_rng(0)
    heads = [rng.random(dims.num_heads) for _ in range(dims.num_layers)]
    channels = [rng.random(dims.intermediate_size) for _ in range(dims.num_layers)]
    prune_model(model, select(heads, channels, Structure.dense(dims), dims, level), dims)
    return model


def _runner(spec: dict):
    """Build the spec's model and return a function running its steps (the trainers' own loop bodies)."""
    import torch

    from models.architectures import build_model
    from client.trainers.lora_backprop import backprop_step
    from models.lora import attach_lora
    from runconfig.schema import LoraConfig, ZeroQATConfig

    lora = LoraConfig(rank=spec["rank"], alpha=16.0, dropout=0.0, target_modules=list(TARGETS))
    base = _pruned(build_model(llama_config(spec), 0), spec["sparsity"])
    x = torch.randint(3, spec["vocab"], (spec["batch"], spec["seq"]), generator=torch.Generator().manual_seed(0))
    if spec["trainer"] == "lora_backprop":
        model = attach_lora(base, lora, 0, spec["rank"])
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
        model.train()

        def steps():
            for _ in range(2):
                backprop_step(model, optimizer, x, x)
        return steps
    from client.trainers.zeroqat import batch_loss
    from zeroqat.model import build_quantized, calibration_batches, trainable_tensors
    from zeroqat.spsa import step_seeds, zo_train

    zcfg = ZeroQATConfig()
    calib = calibration_batches(torch.randint(3, spec["vocab"], (zcfg.calibration_windows, spec["seq"])),
                                zcfg.calibration_windows)
    model = build_quantized(base, zcfg, calib, lora, 0, spec["rank"])
    tensors = list(trainable_tensors(model, "lora").values())

    def steps():
        with torch.inference_mode():  # client/trainers/zeroqat.py
            zo_train(tensors, lambda t: batch_loss(model, x, x), step_seeds(0, 1, zcfg.perturbations), zcfg.lr,
                     zcfg.lr_schedule, zcfg.eps, zcfg.grad_clip)
    return steps


def _measure_here(spec: dict) -> dict:
    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(spec.get("threads", 2))
    tiny = dict(spec, hidden=64, intermediate=96, layers=1, heads=2, kv_heads=1, head_dim=32, vocab=64, batch=1,
                seq=8, sparsity=0.0)
    _runner(tiny)()  # warm the code paths the step runs
    _trim()
    base_kib = _status_kib("VmRSS")
    steps = _runner(spec)
    _trim()
    built_kib = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak-RSS mark restarts at the current RSS
    steps()
    peak_kib = _status_kib("VmHWM")
    return {"measured_bytes": (peak_kib - base_kib) * 1024, "resident_before_step_bytes": (built_kib - base_kib) * 1024,
            "base_load_bytes": base_kib * 1024}


def measure(spec: dict, timeout: float = 900) -> dict:
    """Run ``spec`` in a fresh interpreter (this repository on its path) and return its measurement."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.peak_memory", json.dumps(spec)], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    if out.returncode != 0:
        raise RuntimeError(f"peak_memory subprocess failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(_measure_here(json.loads(sys.argv[1]))))
