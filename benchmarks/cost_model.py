"""Cost-model calibration: fleet/cost_model.py's predicted step times vs measured ones on this host.

The "device" is this host itself: its fp32 GEMM rate (median over torch.mm of a few token x hidden x hidden
sizes) and its memory bandwidth (a 64 MiB ``torch.add``, 3 tensors' bytes), measured with the same torch thread
count as the steps. Nothing is fitted: predicted = ``job_cost(shape, job, host kernels).total().seconds(rates)``.
Measured: one training step of tiny Llamas (4 sizes x LoRA ranks 4, 16 x pruning levels 0, 0.5), timed like
the trainers do it -- backprop LoRA (client/trainers/lora_backprop.py: forward, loss, backward, AdamW) and
ZeroQAT (client/trainers/zeroqat.py: one SPSA step, two forwards on a W4A8 packed base, pruned first) --
median of the timed steps after warm-up. Also checks that the simulated clock is deterministic: the default
80-device fleet (priced as SmolLM2-135M) run twice in-process with the same seed must give identical
``clock/sim_time_s`` per round.
Writes docs/benchmarks/cost_model.{md,json}.

    python -m benchmarks.cost_model [--threads 2] [--quick] [--skip-determinism]   # ~10 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
SIZES = [(256, 4), (384, 6), (512, 8), (768, 8)]  # (hidden, layers); head_dim 64, kv heads = heads / 2
RANKS, SPARSITIES = (4, 16), (0.0, 0.5)
BATCH, SEQ, VOCAB = 8, 64, 2048
WARMUP, REPEATS = 2, 5
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def timed(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def host_rates() -> dict:
    """fp32 GEMM GFLOP/s per (m, k, n) and their median; memory GB/s of a large elementwise add."""
    gemm = {}
    for m, k, n in [(512, 512, 512), (512, 1024, 1024), (512, 2048, 2048)]:
        a, b = torch.randn(m, k), torch.randn(k, n)
        gemm[f"{m}x{k}x{n}"] = 2 * m * k * n / timed(lambda: torch.mm(a, b), 20, 3) / 1e9
    numel = 64 * 2**20 // 4
    a, b, c = torch.randn(numel), torch.randn(numel), torch.empty(numel)
    gbps = 3 * numel * 4 / timed(lambda: torch.add(a, b, out=c), 10, 2) / 1e9
    return {"host_gflops": statistics.median(gemm.values()), "host_gbps": gbps, "gemm_gflops": gemm}


def llama_config(hidden: int, layers: int):
    from transformers import LlamaConfig

    heads = hidden // 64
    return LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=round(hidden * 2.6875 / 16) * 16,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                       head_dim=64, max_position_embeddings=256, tie_word_embeddings=True)


def pruned(base, level: float, seed: int = 0):
    """A copy of ``base`` pruned (pruning/prune.py) to a structure selected at ``level`` from random scores."""
    from pruning.prune import prune_model
    from pruning.structure import Dims, Structure, select

    model = copy.deepcopy(base)
    if level > 0:
        dims = Dims.of(base.config)
        rng = np.random.default_rng(seed)
        heads = [rng.random(dims.num_heads) for _ in range(dims.num_layers)]
        channels = [rng.random(dims.intermediate_size) for _ in range(dims.num_layers)]
        prune_model(model, select(heads, channels, Structure.dense(dims), dims, level), dims)
    return model


def backprop_step_s(base, lora_cfg, rank: int, x: torch.Tensor) -> float:
    """Median seconds of a LoRA backprop step, as client/trainers/lora_backprop.py runs it."""
    from models.evaluation import next_token_stats
    from models.lora import attach_lora

    model = attach_lora(copy.deepcopy(base), lora_cfg, 0, rank)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    model.train()

    def step():
        loss_sum, _, tokens = next_token_stats(model(input_ids=x).logits, x)
        loss = loss_sum / max(tokens, 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()

    return timed(step, REPEATS, WARMUP)


def zeroqat_step_s(base, zcfg, lora_cfg, rank: int, x: torch.Tensor) -> float:
    """Median seconds of one SPSA step on the W4A8 packed base, as client/trainers/zeroqat.py runs it."""
    from client.trainers.zeroqat import batch_loss
    from zeroqat.model import build_quantized, calibration_batches, trainable_tensors
    from zeroqat.spsa import step_seeds, zo_train

    calib = calibration_batches(torch.randint(3, VOCAB, (zcfg.calibration_windows, SEQ)), zcfg.calibration_windows)
    model = build_quantized(copy.deepcopy(base), zcfg, calib, lora_cfg, 0, rank)
    tensors = list(trainable_tensors(model, "lora").values())

    def step():
        with torch.inference_mode():
            zo_train(tensors, lambda t: batch_loss(model, x, x), step_seeds(0, 1, zcfg.perturbations), zcfg.lr,
                     zcfg.lr_schedule, zcfg.eps, zcfg.grad_clip)

    return timed(step, REPEATS, WARMUP)


def calibrate(sizes, ranks, sparsities, rates: dict) -> list[dict]:
    from fleet.arch import ArchShape
    from fleet.cost_model import Job, Kernels, Quantized, job_cost
    from models.architectures import build_model
    from quantization.spec import parse_wa
    from runconfig.schema import LoraConfig, ZeroQATConfig

    kernels, zcfg = Kernels(act_bytes=4, weight_bytes=4.0, quant="emulated"), ZeroQATConfig()
    spec = parse_wa(zcfg.quant, zcfg.group_size)
    x = torch.randint(3, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    points = []
    bar = tqdm(total=len(sizes) * len(ranks) * len(sparsities) * 2, desc="points")
    for hidden, layers in sizes:
        config = llama_config(hidden, layers)
        shape = ArchShape.from_hf_config(config, f"llama-{hidden}x{layers}")  # the dense model's shape
        dense = build_model(config, 0)
        for level in sparsities:
            base, kept = pruned(dense, level), shape.kept(level)
            for rank in ranks:
                lora_cfg = LoraConfig(rank=rank, alpha=16.0, dropout=0.0, target_modules=list(TARGETS))
                for trainer in ("lora_backprop", "zeroqat"):
                    bar.set_postfix_str(f"h{hidden} L{layers} r{rank} s{level} {trainer}")
                    backprop = trainer == "lora_backprop"
                    job = Job(backprop=backprop, rank=rank, targets=TARGETS, batch_size=BATCH, seq_len=SEQ,
                              segments=((1, kept),), forwards_per_step=1 if backprop else 2 * zcfg.perturbations,
                              quantized=None if backprop else Quantized(spec.w_bits, zcfg.group_size, spec.a_bits))
                    cost = job_cost(shape, job, kernels).total()
                    predicted = cost.seconds(rates["host_gflops"] * 1e9, rates["host_gbps"] * 1e9)
                    measured = backprop_step_s(base, lora_cfg, rank, x) if backprop else \
                        zeroqat_step_s(base, zcfg, lora_cfg, rank, x)
                    points.append({
                        "model": shape.name, "params": shape.num_params(), "kept_params": shape.num_params(kept),
                        "hidden": hidden, "layers": layers, "rank": rank, "sparsity": level, "trainer": trainer,
                        "gemm_flops": cost.gemm_flops, "gemm_bytes": cost.gemm_bytes,
                        "elementwise_bytes": cost.elementwise_bytes,
                        "predicted_s": predicted, "measured_s": measured,
                        "rel_error": (predicted - measured) / measured})
                    bar.update()
    bar.close()
    return points


def sim_times(cache: str, workdir: Path, tag: str) -> list[float]:
    """Per-round ``clock/sim_time_s`` of the default fleet and method (+fleet=80dev, fedavg_lora) priced as
    SmolLM2-135M, in-process (2 short rounds)."""
    from models.base_checkpoint import load_base_model
    from models.lora import adapter_arrays, attach_lora
    from protocol.messages import to_array_record
    from runconfig.load import compose, to_plain
    from server.central_evaluation import CentralEvaluator
    from server.federation import History, simulation_concurrency
    from server.preflight import prepare
    from simulations.inprocess import InProcessGrid
    from strategies import strategy_class

    run_dir = workdir / tag
    run_dir.mkdir()
    os.chdir(run_dir)  # the run's checkpoint goes to its output_dir, "."
    settings = compose(["+fleet=80dev", "cost=smollm2-135m", "rounds=2", "client.local_steps=2",
                        "federation.eval_cohort_size=0", "model.pretrain.steps=20",
                        "model.pretrain.warmup_steps=2", "data.central_eval_windows=16",
                        f"tracking.uri=sqlite:///{run_dir / 'm.db'}", "tracking.log_adapter=false",
                        f"cache_dir={cache}"])
    prepared = prepare(settings, show_progress=False)
    peft_model = attach_lora(load_base_model(prepared.base_folder), settings.method.lora, settings.seed)
    history = History()
    strategy = strategy_class(settings.method.name)(settings, prepared.devices, prepared.shape,
                                                    concurrency=simulation_concurrency(settings), observers=[history])
    evaluator = CentralEvaluator(peft_model, prepared.corpus, settings.data.seq_len, settings.data.central_eval_windows)
    strategy.start(InProcessGrid(to_plain(settings), settings.fleet.size),
                   to_array_record(adapter_arrays(peft_model)), num_rounds=settings.rounds, evaluate_fn=evaluator)
    return [float(history.rounds[r]["clock/sim_time_s"]) for r in sorted(history.rounds) if r > 0]


def median_abs(points: list[dict]) -> float:
    return float(statistics.median(abs(p["rel_error"]) for p in points))


def write(result: dict) -> str:
    rows = [f"| {p['model']} | {p['params'] / 1e6:.1f}M | {p['kept_params'] / 1e6:.1f}M | {p['rank']} | {p['sparsity']:g} | {p['trainer']} | "
            f"{p['predicted_s']:.4f} | {p['measured_s']:.4f} | {100 * p['rel_error']:+.1f}% |"
            for p in result["points"]]
    by_trainer = ", ".join(f"{k} {100 * v:.1f}%" for k, v in result["median_abs_error_by_trainer"].items())
    gemm = ", ".join(f"{k} {v:.1f}" for k, v in result["gemm_gflops"].items())
    lines = [
        "# Cost model vs measured step times on this host",
        "",
        "`python -m benchmarks.cost_model` times one training step (batch "
        f"{BATCH} x {SEQ} tokens) of tiny Llamas (head_dim 64, GQA, vocab {VOCAB}) as the trainers run it: "
        "backprop LoRA (forward, loss, backward, AdamW on all 7 projections) and ZeroQAT (one SPSA step, two "
        "forwards on a W4A8 group-64 packed base, dequantized and fake-quantized in fp32). Step time = median of "
        f"{REPEATS} steps after {WARMUP} warm-up steps. Pruned points (sparsity 0.5) use the project's structured "
        "pruning (random importance scores).",
        "",
        f"The \"device\" is this host, {result['threads']} torch thread(s): fp32 GEMM {result['host_gflops']:.1f} "
        f"GFLOP/s (median of {gemm}), memory {result['host_gbps']:.1f} GB/s (64 MiB `torch.add`). "
        "Predicted = fleet/cost_model.py's `job_cost(...).total().seconds(GEMM rate, bandwidth)` with "
        "`Kernels(act_bytes=4, weight_bytes=4, quant=\"emulated\")`: the model's form is tested, nothing is fitted.",
        "",
        f"**Median |relative error|: {100 * result['median_abs_error']:.1f}%** ({by_trainer}). "
        f"Deterministic simulated clock (+fleet=80dev priced as SmolLM2-135M, same seed, run twice): "
        f"{result['deterministic_sim_time']} (per-round clock/sim_time_s {result['sim_time_run1']} vs "
        f"{result['sim_time_run2']}).",
        "",
        "| model | params | kept | rank | sparsity | trainer | predicted s | measured s | rel. error |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cost_model.md").write_text("\n".join(lines))
    (OUT / "cost_model.json").write_text(json.dumps(result, indent=2) + "\n")
    return "\n".join(lines)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 size x 1 rank x 1 sparsity (smoke test)")
    parser.add_argument("--skip-determinism", action="store_true")
    parser.add_argument("--cache-dir", default="/tmp/edgefleet-bench-cache")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers/PEFT deprecation notices
    torch.set_num_threads(args.threads)
    rates = host_rates()
    print(f"host: {rates['host_gflops']:.1f} GFLOP/s fp32 GEMM {rates['gemm_gflops']}, "
          f"{rates['host_gbps']:.1f} GB/s, {args.threads} thread(s)", flush=True)
    grid = (SIZES[:1], RANKS[:1], SPARSITIES[:1]) if args.quick else (SIZES, RANKS, SPARSITIES)
    points = calibrate(*grid, rates)
    trainers = sorted({p["trainer"] for p in points})
    result = {"median_abs_error": median_abs(points),
              "median_abs_error_by_trainer": {t: median_abs([p for p in points if p["trainer"] == t])
                                              for t in trainers},
              "threads": args.threads, "quick": args.quick, **rates, "points": points,
              "deterministic_sim_time": None, "sim_time_run1": None, "sim_time_run2": None}
    if not args.skip_determinism:
        cwd = os.getcwd()
        with tempfile.TemporaryDirectory(prefix="cost-model-", ignore_cleanup_errors=True) as tmp:
            try:
                run1, run2 = [sim_times(args.cache_dir, Path(tmp), tag) for tag in ("run1", "run2")]
            finally:
                os.chdir(cwd)
        result.update(deterministic_sim_time=bool(run1 and run1 == run2 and all(t > 0 for t in run1)),
                      sim_time_run1=run1, sim_time_run2=run2)
    print(write(result))
    return result


if __name__ == "__main__":
    main()
