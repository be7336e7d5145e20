"""The trainers on a CUDA GPU at the three priced shapes: measured step time and peak memory vs the cost model.

Trained and priced: the same model -- random weights of each priced shape (conf/cost/smollm2-135m.yaml,
qwen2.5-0.5b.yaml, llama-3.2-1b.yaml), LoRA rank 8 on all 7 projections, batches of 8 x 64 and 8 x 512 tokens.
Per point (backprop LoRA and ZeroQAT, dense and pruned to sparsity 0.5 by pruning/prune.py):

* measured: the median seconds of a step after warm-up (``torch.cuda.synchronize`` around each), as
  client/trainers/lora_backprop.py runs it (forward, loss, backward, AdamW) and as client/trainers/zeroqat.py
  runs it (one SPSA step of ``zeroqat.spsa.zo_train``: two forwards on the W4A8 packed base); peak memory
  (``torch.cuda.max_memory_allocated`` and ``max_memory_reserved``, reset per point, model and data included);
* the trainer itself: one short call of the real trainer on the same model (its loss must be finite);
* predicted: ``fleet.cost_model`` for the same job -- ``job_cost(...).total().seconds(rate, bandwidth)`` and
  ``training_memory`` -- on a profile of this GPU: its measured bf16 matmul peak (8192^3) and device-copy
  bandwidth, at the efficiency every conf/device class assumes for these trainers (0.25; memory 1.0 since the
  bandwidth is measured, not a spec sheet's);
* implied efficiency: counted matmul FLOPs / (measured seconds x measured peak).

The base is stored as the client runtime stores it on this GPU (``client.device_detect.base_dtype``: bf16 where
supported) under the same autocast; ``--base fp32`` keeps it in fp32 as before issue 21. ZeroQAT's base is
packed W4 with its float rest (embeddings, norms) in fp32, as client/trainers/zeroqat.py keeps it.
Without CUDA it exits 2. Every point runs in its own try/except (the error goes into the table) and a global
time budget skips what is left.

    python -m benchmarks.gpu [--quick] [--budget-s 300] [--out docs/benchmarks]

Size (~430 lines): one benchmark's grid, its measurements and its table, kept together.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "benchmarks"
SHAPES = ("smollm2-135m", "qwen2.5-0.5b", "llama-3.2-1b")
TOKENS = ((8, 64), (8, 512))
TRAINERS = ("lora_backprop", "zeroqat")
SPARSITIES = (0.0, 0.5)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK, ALPHA = 8, 16.0
CLASS_EFFICIENCY = 0.25  # conf/device/*.yaml: every class's assumed matmul efficiency for these trainers
# Per dispatched operator on this GPU's host (``seconds(..., operator_s=...)``): the 13 us of docs/cost_model.md
# that conf/device/*.yaml's operator_us scale from. Derived from the H200's 8 x 64 step times in
# /work/shared/gpu.md, so not independent of this benchmark's small-token points.
OPERATOR_S = 13e-6
WARMUP, REPEATS = 2, 5


# ------------------------------------------------------------------------------------------ the shapes
def priced_config(name: str):
    """A transformers config of the priced shape conf/cost/<name>.yaml (Qwen2 when it has q/k/v biases)."""
    import yaml
    from transformers import LlamaConfig, Qwen2Config

    shape = yaml.safe_load((REPO / "conf" / "cost" / f"{name}.yaml").read_text())["shape"]
    cls = Qwen2Config if shape.get("attention_bias") else LlamaConfig
    return cls(vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
               intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["num_hidden_layers"],
               num_attention_heads=shape["num_attention_heads"], num_key_value_heads=shape["num_key_value_heads"],
               head_dim=shape["head_dim"], tie_word_embeddings=shape["tie_word_embeddings"],
               attention_bias=bool(shape.get("attention_bias")), max_position_embeddings=1024)


def build_model(config, device, seed: int = 0):
    """Random weights of ``config``, created on ``device`` (fp32; the caller stores the base as it trains)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.requires_grad_(False)
    model.eval()
    return model


def prune_to(model, level: float, seed: int = 0) -> None:
    """Prune in place (pruning/prune.py) to the structure selected at ``level`` from random importance."""
    import numpy as np

    from pruning.prune import prune_model
    from pruning.structure import Dims, Structure, select

    if level <= 0:
        return
    dims = Dims.of(model.config)
    rng = np.random.default_rng(seed)
    heads = [rng.random(dims.num_heads) for _ in range(dims.num_layers)]
    channels = [rng.random(dims.intermediate_size) for _ in range(dims.num_layers)]
    prune_model(model, select(heads, channels, Structure.dense(dims), dims, level), dims)


# ------------------------------------------------------------------------------------------ prediction
def gpu_profile(device) -> dict:
    """This GPU's measured bf16 matmul peak (8192^3) and device-copy bandwidth (read + write of 1 GiB)."""
    import torch

    if device.type != "cuda":  # a CPU run (tests): nominal numbers, only so the code path runs
        return {"name": "cpu", "peak_flops": 1e11, "bandwidth": 1e10}
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    flops = 2 * n**3 / _cuda_median(lambda: a @ b, 10, 3)
    del a, b
    src = torch.empty(2**28, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / _cuda_median(lambda: dst.copy_(src), 10, 3)
    del src, dst
    torch.cuda.empty_cache()
    return {"name": torch.cuda.get_device_name(device), "peak_flops": flops, "bandwidth": bandwidth}


def _cuda_median(fn, repeats: int, warmup: int) -> float:
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def predict(config, name: str, trainer: str, sparsity: float, batch: int, seq: int, weight_bytes: float,
            profile: dict) -> dict:
    """The cost model's seconds and bytes for one step of this point, on this GPU's profile."""
    from fleet.arch import ArchShape
    from fleet.cost_model import DEVICE_ALLOCATOR_BYTES, Job, Kernels, Quantized, job_cost, training_memory
    from quantization.spec import parse_wa
    from runconfig.schema import ZeroQATConfig

    shape = ArchShape.from_hf_config(config, name)
    forward_only = trainer == "zeroqat"
    z = ZeroQATConfig()
    spec = parse_wa(z.quant, z.group_size)
    quantized = Quantized(spec.w_bits, z.group_size, spec.a_bits) if forward_only else None
    job = Job(backprop=not forward_only, rank=RANK, targets=TARGETS, batch_size=batch, seq_len=seq,
              segments=((1, shape.kept(sparsity)),), forwards_per_step=2 * z.perturbations if forward_only else 1,
              quantized=quantized)
    # what runs here: bf16 activations; ZeroQAT's host implementation dequantizes each layer (emulated); CUDA's
    # foreach AdamW; the caching allocator's fixed working set
    kernels = Kernels(act_bytes=2, weight_bytes=weight_bytes, quant="emulated" if forward_only else "fused",
                      foreach_optimizer=True, allocator_bytes=DEVICE_ALLOCATOR_BYTES)
    cost = job_cost(shape, job, kernels).total()
    return {
        "predicted_s": cost.seconds(profile["peak_flops"] * CLASS_EFFICIENCY, profile["bandwidth"], OPERATOR_S),
        "operators": cost.operators,
        "roofline_s": cost.seconds(profile["peak_flops"], profile["bandwidth"]),
        "gemm_flops": cost.gemm_flops,
        "predicted_bytes": int(training_memory(shape, job, kernels)),
    }


# ------------------------------------------------------------------------------------------ measuring
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_step(step, device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_point(config, trainer: str, sparsity: float, batch: int, seq: int, device, base: str = "auto",
                  warmup: int = WARMUP, repeats: int = REPEATS) -> dict:
    """Build the point's model on ``device``, time its steps and read the peak memory; then one call of the
    real trainer. Works on the CPU too (no memory statistics there), which is how the tests run it."""
    from dataclasses import replace

    import numpy as np
    import torch

    from client.device_detect import autocast, base_dtype, hold_frozen_in
    from client.device_data import DeviceData
    from client.trainers.lora_backprop import LoraBackpropTrainer, backprop_step
    from client.trainers.zeroqat import batch_loss, zeroqat_local_training
    from models.lora import attach_lora
    from protocol.work import Work
    from runconfig.schema import LoraConfig, ZeroQATConfig
    from zeroqat.model import build_quantized, calibration_batches, trainable_tensors
    from zeroqat.spsa import step_seeds, zo_train

    cuda = device.type == "cuda"
    stored = torch.float32 if base == "fp32" else base_dtype(device, "auto")
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(3, config.vocab_size, (batch, seq), generator=gen).to(device)
    lora = LoraConfig(rank=RANK, alpha=ALPHA, target_modules=list(TARGETS))
    zcfg = ZeroQATConfig()
    model = build_model(config, device)
    prune_to(model, sparsity)
    if trainer == "zeroqat":  # as client/trainers/zeroqat.py: packed from fp32 weights, the float rest kept fp32
        stored = torch.float32
        calib = calibration_batches(torch.randint(3, config.vocab_size, (zcfg.calibration_windows, 64),
                                                  generator=gen).to(device), zcfg.calibration_windows)
        model = build_quantized(model, zcfg, calib, lora, 0, RANK)
        tensors = list(trainable_tensors(model, "lora").values())

        def step():
            with torch.inference_mode(), autocast(device, "auto"):
                zo_train(tensors, lambda t: batch_loss(model, x, x), step_seeds(0, 1, zcfg.perturbations),
                         zcfg.lr, zcfg.lr_schedule, zcfg.eps, zcfg.grad_clip)
    else:
        model = attach_lora(hold_frozen_in(model, stored), lora, 0, RANK)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
        model.train()

        def step():  # the trainer's own step, under the autocast the client runtime wraps it in
            with autocast(device, "auto"):
                backprop_step(model, optimizer, x, x)

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    measured = _median_step(step, device, warmup, repeats)
    out = {"measured_s": measured, "base_dtype": str(stored).removeprefix("torch."),
           "params": int(sum(p.numel() for p in model.parameters())),
           "peak_bytes": int(torch.cuda.max_memory_allocated(device)) if cuda else None,
           "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(device)) if cuda else None}
    # the real trainer, two steps on the same model (what a device runs; its loss must be finite)
    data = DeviceData(x, x, x, x)
    work = Work(server_round=1, device_index=0, trainer=trainer, local_steps=2, batch_size=batch, lr=1e-4,
                rank=RANK, seed=0)
    with autocast(device, "auto"):
        if trainer == "zeroqat":
            adapter, _, metrics = zeroqat_local_training(model, replace(zcfg, lr=1e-4, eps=1e-3), data, work)
        else:
            result = LoraBackpropTrainer().train(model, data, work)
            adapter, metrics = result.adapter, result.metrics
    out["trainer_loss"] = float(metrics["train_loss"])
    out["trainer_ok"] = bool(np.isfinite(out["trainer_loss"]) and all(np.isfinite(v).all() for v in adapter.values()))
    del model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------------------ the run
def grid(quick: bool) -> list[tuple[str, str, float, int, int]]:
    shapes = SHAPES[:1] + SHAPES[-1:] if quick else SHAPES
    tokens = TOKENS[:1] if quick else TOKENS
    # the small token count first over every shape: what a spent time budget skips is the larger batches
    return [(s, t, sp, b, q) for (b, q) in tokens for s in shapes for t in TRAINERS for sp in SPARSITIES]


def run(points, device, budget_s: float, base: str = "auto", repeats: int = REPEATS, profile: dict | None = None,
        configs: dict | None = None, log=print, save=None) -> dict:
    """Every point in order (``save(result)`` after each, so a killed run leaves what it measured)."""
    import torch

    started = time.perf_counter()
    if profile is None:
        try:
            profile = gpu_profile(device)
        except Exception as exc:  # noqa: BLE001 -- price with /work/shared/gpu.md's H200 numbers, and say so
            profile = {"name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                       "peak_flops": 759e12, "bandwidth": 3.8e12, "error": f"{type(exc).__name__}: {exc}"[:300]}
            log(f"profile not measured ({profile['error']}); using the H200's 759 TFLOP/s and 3.8 TB/s")
    rows = []

    def result() -> dict:
        return {"device_name": profile["name"], "torch": torch.__version__,
                "peak_flops": profile["peak_flops"], "bandwidth_bytes_per_s": profile["bandwidth"],
                "class_efficiency": CLASS_EFFICIENCY, "base": base, "rank": RANK, "targets": list(TARGETS),
                "trained": "random weights of each priced shape", "priced": "the same shape",
                "profile_error": profile.get("error"),
                "wall_s": time.perf_counter() - started, "points": rows}

    for name, trainer, sparsity, batch, seq in points:
        row = {"model": name, "trainer": trainer, "sparsity": sparsity, "batch": batch, "seq_len": seq,
               "tokens": batch * seq, "error": None}
        if time.perf_counter() - started > budget_s:
            row["error"] = f"skipped: time budget of {budget_s:.0f} s spent"
            rows.append(row)
            continue
        try:
            config = (configs or {}).get(name) or priced_config(name)
            row.update(measure_point(config, trainer, sparsity, batch, seq, device, base, repeats=repeats))
            weight_bytes = 4.0 if row["base_dtype"] == "float32" else 2.0
            row.update(predict(config, name, trainer, sparsity, batch, seq, weight_bytes, profile))
            row["implied_efficiency"] = row["gemm_flops"] / (row["measured_s"] * profile["peak_flops"])
            row["time_ratio"] = row["predicted_s"] / row["measured_s"]
            if row["peak_bytes"]:
                row["memory_ratio"] = row["predicted_bytes"] / row["peak_bytes"]
        except Exception as exc:  # noqa: BLE001 -- the table records what failed; the other points still run
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            if device.type == "cuda":
                gc.collect()
                torch.cuda.empty_cache()
        log(_line(row))
        rows.append(row)
        if save is not None:
            save(result())
    return result()


def reprice(result: dict, commit: str) -> dict:
    """Recompute every measured point's prediction (and the ratios) with the current cost model; the measured
    values are left as they are."""
    profile = {"peak_flops": result["peak_flops"], "bandwidth": result["bandwidth_bytes_per_s"]}
    for row in result["points"]:
        if row.get("error"):
            continue
        config = priced_config(row["model"])
        weight_bytes = 4.0 if row["base_dtype"] == "float32" else 2.0
        row.update(predict(config, row["model"], row["trainer"], row["sparsity"], row["batch"], row["seq_len"],
                           weight_bytes, profile))
        row["time_ratio"] = row["predicted_s"] / row["measured_s"]
        if row.get("peak_bytes"):
            row["memory_ratio"] = row["predicted_bytes"] / row["peak_bytes"]
    result["repriced_at"] = commit
    return result


def _gib(b) -> str:
    return "-" if b is None else f"{b / 2**30:.2f}"


def _line(r: dict) -> str:
    if r.get("error"):
        return f"{r['model']} {r['trainer']} s={r['sparsity']} {r['batch']}x{r['seq_len']}: ERROR {r['error']}"
    return (f"{r['model']} {r['trainer']} s={r['sparsity']} {r['batch']}x{r['seq_len']}: "
            f"{r['measured_s']:.4f} s (pred {r['predicted_s']:.4f}), peak {_gib(r['peak_bytes'])} GiB "
            f"(pred {_gib(r['predicted_bytes'])}), eff {r['implied_efficiency']:.3f}")


def markdown(result: dict) -> str:
    lines = [
        "# GPU benchmark: the trainers on CUDA at the priced shapes (`python -m benchmarks.gpu`)",
        "",
        f"Device: **{result['device_name']}** (torch {result['torch']}); measured bf16 matmul peak "
        f"{result['peak_flops'] / 1e12:.0f} TFLOP/s, device copy {result['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s.",
        f"Trained: {result['trained']}; priced: {result['priced']} (fleet/cost_model.py). LoRA rank "
        f"{result['rank']} on all 7 projections; base stored as `{result['base']}` chooses "
        "(client.device_detect.base_dtype), bf16 autocast; ZeroQAT: W4A8 g64 packed base, one SPSA direction.",
        f"Predicted time at the device classes' matmul efficiency {result['class_efficiency']}; implied "
        "efficiency = counted matmul FLOPs / (measured s x measured peak). Memory: peak allocated (reserved), "
        "reset per point, model and data included.",
        "",
        "| model | trainer | sparsity | tokens | base | step s | predicted s | implied eff. | peak GiB (reserved)"
        " | predicted GiB | pred/meas mem | trainer ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["points"]:
        head = f"| {r['model']} | {r['trainer']} | {r['sparsity']} | {r['batch']}x{r['seq_len']} |"
        if r.get("error"):
            lines.append(f"{head} | error: {r['error'].replace('|', '/')} | | | | | | |")
            continue
        mem = f"{r['memory_ratio']:.2f}" if r.get("memory_ratio") else "-"
        lines.append(f"{head} {r['base_dtype']} | {r['measured_s']:.4f} | {r['predicted_s']:.4f} | "
                     f"{r['implied_efficiency']:.3f} | {_gib(r['peak_bytes'])} ({_gib(r['peak_reserved_bytes'])}) | "
                     f"{_gib(r['predicted_bytes'])} | {mem} | {r['trainer_ok']} |")
    lines += ["", f"Wall time {result['wall_s']:.0f} s.", ""]
    if result.get("repriced_at"):
        ratios = {t: [r["memory_ratio"] for r in result["points"] if r["trainer"] == t and r.get("memory_ratio")]
                  for t in TRAINERS}
        lines += [f"Predictions (predicted s, predicted GiB and the ratios) recomputed at commit "
                  f"{result['repriced_at']} with that commit's fleet/cost_model.py (`python -m benchmarks.gpu "
                  "--reprice`) from the H200 measurements of 2026-12-04; measured values unchanged. Per-operator "
                  f"overhead {OPERATOR_S * 1e6:.0f} us (derived from the H200's 8 x 64 step times, so not independent "
                  "of these points).",
                  "Predicted/measured memory: " + "; ".join(
                      f"{t} {min(v):.2f}-{max(v):.2f}" for t, v in ratios.items() if v) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 shapes x 8x64 tokens (8 points)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="skip the points left after this many seconds")
    parser.add_argument("--base", choices=("auto", "fp32"), default="auto", help="base storage dtype")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--reprice", action="store_true",
                        help="no GPU: recompute the predictions of the measured points in OUT/gpu.json and rewrite it")
    args = parser.parse_args(argv)
    if args.reprice:
        import subprocess

        path = args.out / "gpu.json"
        if not path.is_file():
            print(f"benchmarks.gpu --reprice: {path} does not exist", file=sys.stderr)
            return 2
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip() or "unknown"
        result = reprice(json.loads(path.read_text()), commit)
        path.write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "gpu.md").write_text(markdown(result))
        print(markdown(result).splitlines()[-2])
        return 0
    import torch

    if not torch.cuda.is_available():
        print("benchmarks.gpu needs a CUDA GPU: torch.cuda.is_available() is False here; nothing was run",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    def save(result: dict) -> None:
        (args.out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "gpu.md").write_text(markdown(result))

    result = run(grid(args.quick), torch.device("cuda"), args.budget_s, args.base, args.repeats, save=save)
    save(result)
    print(f"wrote {args.out / 'gpu.md'} and gpu.json ({sum(r['error'] is None for r in result['points'])}"
          f"/{len(result['points'])} points measured)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
