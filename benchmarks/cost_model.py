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
Per-step overhead: the host's per-operator cost is measured first, apart from the grid: steps of tiny Llamas
(hidden 64, 1-8 layers, 2 x 8 tokens; backprop), the slope of (measured - roofline) seconds against the
operators the cost model counts for them (``step_operators``). Predicted = roofline + operators x that cost.

Memory: ``memory_points``, the cost model's ``training_memory`` (host kernels, ``allocator_fraction=0``) against
the peak bytes torch's CPU allocator holds live during one step, from torch.profiler's allocation records in a fresh
process per point (benchmarks/live_memory.py), for 3 tiny Llamas x 2 token counts x {backprop, ZeroQAT} x
{dense, pruned 0.5}: it validates the counted terms. ``--rss-memory`` also measures ``rss_memory_points``: the
peak resident memory (benchmarks/peak_memory.py; glibc's heap on top of the live bytes) against the prediction
with the host allocator share, measured once on a point outside that grid as the ratio of measured to predicted
transient bytes (``allocator_fraction``, fleet/cost_model.py's HOST_ALLOCATOR_FRACTION).
Writes docs/benchmarks/cost_model.{md,json}.

    python -m benchmarks.cost_model [--threads 2] [--quick] [--skip-determinism] [--memory-only|--skip-memory] [--rss-memory]

Size (~590 lines): one benchmark whose table joins four measurements of one cost model (step times, operator
overhead, live and resident memory, the clock's determinism); the federated run it needs is server.run.FederatedRun.
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


def tiny_spec(hidden: int, layers: int) -> dict:
    """The calibration grid's tiny Llama: head_dim 64, kv heads = heads / 2, MLP ~2.69 x hidden."""
    heads = hidden // 64
    return {"hidden": hidden, "intermediate": round(hidden * 2.6875 / 16) * 16, "layers": layers, "heads": heads,
            "kv_heads": max(1, heads // 2), "head_dim": 64, "vocab": VOCAB}


def llama_config(hidden: int, layers: int):
    from benchmarks.peak_memory import llama_config as from_spec

    return from_spec({**tiny_spec(hidden, layers), "seq": SEQ})


HOST_KERNELS = {"act_bytes": 4, "weight_bytes": 4.0, "quant": "emulated"}  # fp32, SDPA, AdamW per-tensor loop
OPERATOR_LAYERS = (1, 2, 4, 8)  # the per-operator microbenchmark's tiny models (hidden 64, 2 x 8 tokens)
SMOLLM2 = {"hidden": 576, "intermediate": 1536, "layers": 30, "heads": 9, "kv_heads": 3, "head_dim": 64,
           "vocab": 49152}  # conf/cost/smollm2-135m.yaml
MEMORY_SHAPES = {"llama-256x4": tiny_spec(256, 4), "llama-512x8": tiny_spec(512, 8), "smollm2-135m": SMOLLM2}
MEMORY_TOKENS = ((8, 64), (8, 256))
MEMORY_RANK = 8
ALLOCATOR_POINT = ("llama-384x6", tiny_spec(384, 6), 8, 128)  # outside the memory grid


def operator_cost(rates: dict) -> dict:
    """Seconds per dispatched operator on this host: least-squares slope of (measured - roofline) step seconds
    against the counted operators of tiny backprop models (hidden 64, 2 heads of 32, 1-8 layers, 2 x 8 tokens)."""
    from transformers import LlamaConfig

    from fleet.arch import ArchShape
    from fleet.cost_model import Job, Kernels, job_cost
    from models.architectures import build_model
    from runconfig.schema import LoraConfig

    kernels = Kernels(**HOST_KERNELS)
    x = torch.randint(3, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    ops, excess = [], []
    for layers in OPERATOR_LAYERS:
        config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=64,
                             tie_word_embeddings=True)
        shape = ArchShape.from_hf_config(config, f"tiny-64x{layers}")
        job = Job(True, 4, TARGETS, 2, 8, ((1, shape.dense()),))
        cost = job_cost(shape, job, kernels).total()
        lora_cfg = LoraConfig(rank=4, alpha=16.0, dropout=0.0, target_modules=list(TARGETS))
        measured = backprop_step_s(build_model(config, 0), lora_cfg, 4, x, repeats=30)
        ops.append(cost.operators)
        excess.append(measured - cost.seconds(rates["host_gflops"] * 1e9, rates["host_gbps"] * 1e9))
    slope, intercept = np.polyfit(ops, excess, 1)
    return {"operator_s": float(slope), "operator_fit_intercept_s": float(intercept),
            "operator_fit": [{"layers": n, "operators": o, "excess_s": e}
                             for n, o, e in zip(OPERATOR_LAYERS, ops, excess)]}


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


def backprop_step_s(base, lora_cfg, rank: int, x: torch.Tensor, repeats: int = REPEATS) -> float:
    """Median seconds of a LoRA backprop step, as client/trainers/lora_backprop.py runs it."""
    from client.trainers.lora_backprop import backprop_step
    from models.lora import attach_lora

    model = attach_lora(copy.deepcopy(base), lora_cfg, 0, rank)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    model.train()

    def step():
        backprop_step(model, optimizer, x, x)

    return timed(step, repeats, WARMUP)


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

    kernels, zcfg = Kernels(**HOST_KERNELS), ZeroQATConfig()
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
                    roofline = cost.seconds(rates["host_gflops"] * 1e9, rates["host_gbps"] * 1e9)
                    predicted = roofline + cost.operators * rates["operator_s"]
                    measured = backprop_step_s(base, lora_cfg, rank, x) if backprop else \
                        zeroqat_step_s(base, zcfg, lora_cfg, rank, x)
                    points.append({
                        "model": shape.name, "params": shape.num_params(), "kept_params": shape.num_params(kept),
                        "hidden": hidden, "layers": layers, "rank": rank, "sparsity": level, "trainer": trainer,
                        "gemm_flops": cost.gemm_flops, "gemm_bytes": cost.gemm_bytes,
                        "elementwise_bytes": cost.elementwise_bytes, "operators": cost.operators,
                        "roofline_s": roofline, "predicted_s": predicted, "measured_s": measured,
                        "rel_error": (predicted - measured) / measured})
                    bar.update()
    bar.close()
    return points


def memory_job(spec: dict, trainer: str, level: float, batch: int, seq: int):
    """(priced shape, Job) of a memory point, as fleet/pricing.py would build it."""
    from benchmarks.peak_memory import llama_config as from_spec
    from fleet.arch import ArchShape
    from fleet.cost_model import Job, Quantized
    from quantization.spec import parse_wa
    from runconfig.schema import ZeroQATConfig

    zcfg = ZeroQATConfig()
    qspec = parse_wa(zcfg.quant, zcfg.group_size)
    shape = ArchShape.from_hf_config(from_spec({**spec, "seq": seq}), "shape")
    backprop = trainer == "lora_backprop"
    return shape, Job(backprop=backprop, rank=MEMORY_RANK, targets=TARGETS, batch_size=batch, seq_len=seq,
                      segments=((1, shape.kept(level)),), forwards_per_step=1 if backprop else 2 * zcfg.perturbations,
                      quantized=None if backprop else Quantized(qspec.w_bits, zcfg.group_size, qspec.a_bits))


MEMORY_CACHE: Path | None = None  # --memory-cache: measured points by spec (JSON lines), reused by a rerun


CACHED_ONLY = False  # --memory-cached-only


def _cached(spec: dict, trainer: str, level: float, batch: int, seq: int, threads: int) -> dict | None:
    full = {**spec, "batch": batch, "seq": seq, "trainer": trainer, "sparsity": level, "rank": MEMORY_RANK,
            "threads": threads}
    key = json.dumps(full, sort_keys=True)
    if MEMORY_CACHE is not None and MEMORY_CACHE.exists():
        for line in MEMORY_CACHE.read_text().splitlines():
            entry = json.loads(line)
            if entry["spec"] == key:
                return entry["result"]
    return None


def _measure_point(spec: dict, trainer: str, level: float, batch: int, seq: int, threads: int) -> dict:
    from benchmarks.peak_memory import measure

    full = {**spec, "batch": batch, "seq": seq, "trainer": trainer, "sparsity": level, "rank": MEMORY_RANK,
            "threads": threads}
    key = json.dumps(full, sort_keys=True)
    cached = _cached(spec, trainer, level, batch, seq, threads)
    if cached is not None:
        return cached
    result = measure(full)
    if MEMORY_CACHE is not None:
        MEMORY_CACHE.parent.mkdir(parents=True, exist_ok=True)
        with MEMORY_CACHE.open("a") as f:
            f.write(json.dumps({"spec": key, "result": result}) + "\n")
    return result


TRANSIENT_TERMS = ("saved_activations", "working_set", "loss")


def host_allocator_fraction(threads: int) -> dict:
    """The host allocator's working set as a share of a step's transient bytes, measured at ALLOCATOR_POINT (both
    trainers; the larger is kept): measured peak over the cost model's bytes, beyond the persistent terms."""
    from fleet.cost_model import Kernels, memory_terms

    from concurrent.futures import ThreadPoolExecutor

    name, spec, batch, seq = ALLOCATOR_POINT
    trainers = ("lora_backprop", "zeroqat")
    with ThreadPoolExecutor(2) as pool:
        measured = list(pool.map(lambda tr: _measure_point(spec, tr, 0.0, batch, seq, threads), trainers))
    out = {}
    for trainer, m in zip(trainers, measured):
        shape, job = memory_job(spec, trainer, 0.0, batch, seq)
        terms = memory_terms(shape, job, Kernels(**HOST_KERNELS))
        transient = sum(terms.get(k, 0.0) for k in TRANSIENT_TERMS)
        out[trainer] = (m["measured_bytes"] - (sum(terms.values()) - transient)) / transient - 1.0
    return {"allocator_point": f"{name} {batch}x{seq}", "allocator_fraction_by_trainer": out,
            "allocator_fraction": max(out.values())}


LIVE_SHAPES = {"llama-128x2": tiny_spec(128, 2), "llama-256x4": tiny_spec(256, 4), "llama-512x8": tiny_spec(512, 8)}
LIVE_LABEL = "live bytes: torch's CPU allocations (torch.profiler, profile_memory=True), fresh process"


def live_memory_grid(threads: int, quick: bool = False, jobs: int = 1, rss_points: list[dict] = ()) -> list[dict]:
    """``training_memory`` with the host kernels and no allocator share against the peak bytes torch holds live
    (benchmarks/live_memory.py), each point in a fresh process; the RSS measurement of the same point, where
    there is one, is attached (labelled ``rss_*``)."""
    from concurrent.futures import ThreadPoolExecutor

    from benchmarks.live_memory import measure
    from fleet.cost_model import Kernels, memory_terms, training_memory

    kernels = Kernels(**HOST_KERNELS)
    shapes = dict(list(LIVE_SHAPES.items())[:1]) if quick else LIVE_SHAPES
    tokens = MEMORY_TOKENS[:1] if quick else MEMORY_TOKENS
    grid = [(n, b, s, tr, lv) for n in shapes for b, s in tokens for tr in ("lora_backprop", "zeroqat")
            for lv in ((0.0,) if quick else SPARSITIES)]
    specs = [{**shapes[n], "batch": b, "seq": s, "trainer": tr, "sparsity": lv, "rank": MEMORY_RANK,
              "threads": threads} for n, b, s, tr, lv in grid]
    with ThreadPoolExecutor(jobs) as pool:
        results = list(tqdm(pool.map(measure, specs), total=len(specs), desc="live memory points"))
    rss = {(p["model"], p["tokens"], p["trainer"], p["sparsity"]): p for p in rss_points}
    points = []
    for (name, batch, seq, trainer, level), measured in zip(grid, results):
        shape, job = memory_job(shapes[name], trainer, level, batch, seq)
        predicted = training_memory(shape, job, kernels)
        point = {"model": name, "tokens": f"{batch}x{seq}", "trainer": trainer, "sparsity": level,
                 "rank": MEMORY_RANK, "measured": LIVE_LABEL, "predicted_bytes": predicted,
                 "measured_bytes": measured["live_bytes"], "built_bytes": measured["built_bytes"],
                 "step_peak_bytes": measured["step_peak_bytes"],
                 "rel_error": (predicted - measured["live_bytes"]) / measured["live_bytes"],
                 "terms": {k: float(v) for k, v in memory_terms(shape, job, kernels).items()}}
        other = rss.get((name, point["tokens"], trainer, level))
        if other is not None:
            point.update(rss_predicted_bytes=other["predicted_bytes"], rss_measured_bytes=other["measured_bytes"],
                         rss_rel_error=other["rel_error"])
        points.append(point)
    return points


def memory_grid(threads: int, allocator_fraction: float, quick: bool = False, jobs: int = 1) -> list[dict]:
    from fleet.cost_model import Kernels, memory_terms, training_memory

    kernels = Kernels(**HOST_KERNELS, allocator_fraction=allocator_fraction)
    shapes = dict(list(MEMORY_SHAPES.items())[:1]) if quick else MEMORY_SHAPES
    tokens = MEMORY_TOKENS[:1] if quick else MEMORY_TOKENS
    grid = [(n, b, s, tr, lv) for n in shapes for b, s in tokens for tr in ("lora_backprop", "zeroqat")
            for lv in ((0.0,) if quick else SPARSITIES)]
    from concurrent.futures import ThreadPoolExecutor

    if CACHED_ONLY:  # report what an interrupted run measured (the table says how many points of the grid)
        grid = [g for g in grid if _cached(shapes[g[0]], g[3], g[4], g[1], g[2], threads) is not None]
    with ThreadPoolExecutor(jobs) as pool:  # each point is its own process: only the peak RSS is read
        futures = [pool.submit(_measure_point, shapes[n], tr, lv, b, s, threads) for n, b, s, tr, lv in grid]
        results = [f.result() for f in tqdm(futures, desc="memory points")]
    points = []
    for (name, batch, seq, trainer, level), measured in zip(grid, results):
        shape, job = memory_job(shapes[name], trainer, level, batch, seq)
        predicted = training_memory(shape, job, kernels)
        points.append({"model": name, "tokens": f"{batch}x{seq}", "trainer": trainer, "sparsity": level,
                       "rank": MEMORY_RANK, "predicted_bytes": predicted, "measured_bytes": measured["measured_bytes"],
                       "resident_before_step_bytes": measured["resident_before_step_bytes"],
                       "rel_error": (predicted - measured["measured_bytes"]) / measured["measured_bytes"],
                       "terms": {k: float(v) for k, v in memory_terms(shape, job, kernels).items()}})
    return points


def sim_times(cache: str, workdir: Path, tag: str) -> list[float]:
    """Per-round ``clock/sim_time_s`` of the default fleet and method (+fleet=80dev, fedavg_lora) priced as
    SmolLM2-135M, in-process (2 short rounds)."""
    from runconfig.load import compose
    from runconfig.plain import to_plain
    from server.run import FederatedRun
    from simulations.inprocess import InProcessGrid

    run_dir = workdir / tag
    run_dir.mkdir()
    os.chdir(run_dir)  # the run's checkpoint and summary go to its output_dir, "."
    settings = compose(["+fleet=80dev", "model=tiny-llama", "cost=smollm2-135m", "rounds=2", "client.local_steps=2",
                        "federation.eval_cohort_size=0", "model.pretrain.steps=20",
                        "model.pretrain.warmup_steps=2", "data.central_eval_windows=16",
                        f"tracking.uri=sqlite:///{run_dir / 'm.db'}", "tracking.log_adapter=false",
                        "tracking.generations=0", f"cache_dir={cache}"])
    run = FederatedRun(settings, show_progress=False)
    run.execute(InProcessGrid(to_plain(settings), settings.fleet.size))
    return [float(run.history.rounds[r]["clock/sim_time_s"]) for r in sorted(run.history.rounds) if r > 0]


def median_abs(points: list[dict]) -> float:
    return float(statistics.median(abs(p["rel_error"]) for p in points))


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f}"


def write(result: dict) -> str:
    rows = [f"| {p['model']} | {p['params'] / 1e6:.1f}M | {p['kept_params'] / 1e6:.1f}M | {p['rank']} | {p['sparsity']:g} | {p['trainer']} | "
            f"{p.get('operators', 0):,.0f} | {p.get('roofline_s', p['predicted_s']):.4f} | "
            f"{p['predicted_s']:.4f} | {p['measured_s']:.4f} | {100 * p['rel_error']:+.1f}% |"
            for p in result["points"]]
    by_trainer = ", ".join(f"{k} {100 * v:.1f}%" for k, v in result["median_abs_error_by_trainer"].items())
    gemm = ", ".join(f"{k} {v:.1f}" for k, v in result["gemm_gflops"].items())
    op = result.get("operator_s")
    op_fit = ", ".join(f"{f['layers']} layer(s): {f['operators']:,.0f} ops, {1e3 * f['excess_s']:.1f} ms"
                       for f in result.get("operator_fit", []))
    mem_rows = [f"| {p['model']} | {p['tokens']} | {p['trainer']} | {p['sparsity']:g} | {_mib(p['predicted_bytes'])} | "
                f"{_mib(p['measured_bytes'])} | {100 * p['rel_error']:+.1f}% | "
                + " / ".join(_mib(p['terms'].get(k, 0.0)) for k in MEMORY_TERM_ORDER) + " |"
                for p in result.get("rss_memory_points", [])]
    live_rows = [f"| {p['model']} | {p['tokens']} | {p['trainer']} | {p['sparsity']:g} | {_mib(p['predicted_bytes'])} | "
                 f"{_mib(p['measured_bytes'])} | {100 * p['rel_error']:+.1f}% | "
                 + (f"{_mib(p['rss_measured_bytes'])} ({100 * p['rss_rel_error']:+.1f}%)" if "rss_measured_bytes" in p
                    else "-") + " |"
                 for p in result.get("memory_points", [])]
    lines = [
        "# Cost model vs measured step times and peak memory on this host",
        "",
        "`python -m benchmarks.cost_model` times one training step (batch "
        f"{BATCH} x {SEQ} tokens) of tiny Llamas (head_dim 64, GQA, vocab {VOCAB}) as the trainers run it: "
        "backprop LoRA (forward, loss, backward, AdamW on all 7 projections) and ZeroQAT (one SPSA step, two "
        "forwards on a W4A8 group-64 packed base, dequantized and fake-quantized in fp32). Step time = median of "
        f"{REPEATS} steps after {WARMUP} warm-up steps. Pruned points (sparsity 0.5) use the project's structured "
        "pruning (random importance scores). The model trained and the model priced are the same tiny Llama.",
        "",
        f"The \"device\" is this host, {result['threads']} torch thread(s): fp32 GEMM {result['host_gflops']:.1f} "
        f"GFLOP/s (median of {gemm}), memory {result['host_gbps']:.1f} GB/s (64 MiB `torch.add`)"
        + (f", **{1e6 * op:.1f} µs per dispatched operator** (slope of measured minus roofline seconds against the "
           f"counted operators of tiny backprop Llamas, hidden 64, 2 x 8 tokens, not in the grid: {op_fit})"
           if op is not None else "") + ". "
        "Predicted = fleet/cost_model.py's `job_cost(...).total().seconds(GEMM rate, bandwidth, operator_s)` with "
        "`Kernels(act_bytes=4, weight_bytes=4, quant=\"emulated\")`: roofline + operators x per-operator cost; "
        "nothing is fitted to the grid.",
        "",
        f"Host load when measured: {result.get('load', 'not recorded')}."
        + ("" if op is not None else " **These step times predate the per-step overhead term** (roofline only, "
           "no operator count): rerun `python -m benchmarks.cost_model --skip-memory` on a quiet machine."),
        "",
        f"**Median |relative error|: {100 * result['median_abs_error']:.1f}%** ({by_trainer}). "
        f"Deterministic simulated clock (+fleet=80dev priced as SmolLM2-135M, same seed, run twice): "
        f"{result['deterministic_sim_time']} (per-round clock/sim_time_s {result['sim_time_run1']} vs "
        f"{result['sim_time_run2']}).",
        "",
        "| model | params | kept | rank | sparsity | trainer | operators | roofline s | predicted s | measured s "
        "| rel. error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if live_rows:
        lines += [
            "## Peak live bytes of one step (validates the memory model's terms)",
            "",
            "fleet/cost_model.py's `training_memory` with the host kernels (fp32, SDPA attention, emulated W4A8, "
            f"rank {MEMORY_RANK} on all 7 projections, per-tensor AdamW) and `allocator_fraction=0` against the peak "
            "bytes torch's CPU allocator holds live, in a fresh process per point (benchmarks/live_memory.py: "
            "torch.profiler with profile_memory=True; live = what building the model leaves allocated + the peak "
            "of the steps above it; backprop two steps, ZeroQAT one SPSA step under inference_mode). This validates "
            "the counted terms (weights, adapter and optimizer state, saved activations, working set, loss "
            "buffers). Models trained and priced: tiny Llamas (head_dim 64, GQA, vocab "
            f"{VOCAB}) with random weights; pruned = structured pruning at 0.5, the pruned model alone in memory.",
            "",
            f"Points: {len(result['memory_points'])} of {result.get('memory_grid_size', '?')}. "
            f"**Worst under-prediction: {100 * result['memory_max_under']:.1f}%**; worst over-prediction "
            f"{100 * result['memory_max_over']:.1f}% (target: never under by more than 5%, at most 25% over). "
            "Last column: the same point's peak RSS (next section) where measured, and the error of the RSS "
            "prediction made in that run (with the cost model of then).",
            "",
            "| model | tokens | trainer | sparsity | predicted MiB | live MiB | rel. error | RSS MiB (rel. error) |",
            "|---|---|---|---|---|---|---|---|",
            *live_rows,
            "",
        ]
    if mem_rows:
        frac = result["allocator_fraction_by_trainer"]
        lines += [
            "## Peak resident memory of one step (validates the host allocator share)",
            "",
            "fleet/cost_model.py's `training_memory` (host kernels: fp32, SDPA attention, emulated W4A8, rank "
            f"{MEMORY_RANK} on all 7 projections, plus `HOST_ALLOCATOR_FRACTION` of the transient bytes for glibc's "
            "heap) against the step's peak resident memory in a fresh process "
            "(benchmarks/peak_memory.py: VmHWM after the step minus the resident set before the model was built, "
            "code paths warmed on a tiny model first; backprop: two steps, ZeroQAT: one SPSA step). Models trained "
            "and priced: the tiny Llamas (vocab 2048) and SmolLM2-135M's shape (conf/cost/smollm2-135m.yaml) with "
            "random weights. Pruned = structured pruning at 0.5, the pruned model alone in memory.",
            "",
            f"Host allocator working set: glibc's malloc keeps freed blocks in its heap (its mmap threshold rises to "
            f"the largest block freed), so the resident peak is a multiple of the live bytes. Measured once at "
            f"{result['allocator_point']} (outside the grid) as measured / predicted transient bytes - 1: "
            + ", ".join(f"{k} {v:.2f}" for k, v in frac.items())
            + f"; the larger, **{result['allocator_fraction']:.2f}**, is `Kernels.allocator_fraction` for the host.",
            "",
            f"Points measured: {len(result['rss_memory_points'])} of the grid's "
            f"{result.get('rss_memory_grid_size', '?')} (`--rss-memory`). Worst under-prediction: "
            f"{100 * result['rss_memory_max_under']:.1f}%; worst over-prediction "
            f"{100 * result['rss_memory_max_over']:.1f}% (RSS depends on glibc's heap and the host's load).",
            "",
            "| model | tokens | trainer | sparsity | predicted MiB | measured MiB | rel. error | "
            + " / ".join(MEMORY_TERM_ORDER) + " (MiB) |",
            "|---|---|---|---|---|---|---|---|",
            *mem_rows,
            "",
        ]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cost_model.md").write_text("\n".join(lines))
    (OUT / "cost_model.json").write_text(json.dumps(result, indent=2) + "\n")
    return "\n".join(lines)


MEMORY_TERM_ORDER = ("base_weights", "adapter_state", "saved_activations", "working_set", "loss", "allocator")


def main() -> dict:
    global MEMORY_CACHE, OUT, CACHED_ONLY
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 size x 1 rank x 1 sparsity (smoke test)")
    parser.add_argument("--skip-determinism", action="store_true")
    parser.add_argument("--memory-only", action="store_true", help="only the memory points (keeps the time results)")
    parser.add_argument("--skip-memory", action="store_true", help="only the step times (keeps the memory results)")
    parser.add_argument("--memory-jobs", type=int, default=1, help="memory points measured at once (processes)")
    parser.add_argument("--memory-cache", type=Path, default=None,
                        help="JSON-lines file of measured memory points, reused when the same point is asked again")
    parser.add_argument("--cache-dir", default="/tmp/edgefleet-bench-cache")
    parser.add_argument("--rss-memory", action="store_true",
                        help="also the peak-RSS memory grid (benchmarks/peak_memory.py; slow) and the host allocator share")
    parser.add_argument("--memory-cached-only", action="store_true",
                        help="report only the memory points already in --memory-cache (an interrupted run)")
    parser.add_argument("--out", type=Path, default=OUT, help="where cost_model.{md,json} go (merged into those)")
    args = parser.parse_args()
    MEMORY_CACHE, OUT, CACHED_ONLY = args.memory_cache, args.out, args.memory_cached_only
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers/PEFT deprecation notices
    torch.set_num_threads(args.threads)
    new = {}
    if not args.memory_only:
        new.update(time_results(args))
    previous = OUT / "cost_model.json"  # read now: a part run keeps the other part's results
    old = json.loads(previous.read_text()) if previous.exists() else {}
    if old.get("memory_points") and "measured" not in old["memory_points"][0]:  # RSS points of an earlier run
        old.update(rss_memory_points=old.pop("memory_points"), rss_memory_grid_size=old.pop("memory_grid_size", None),
                   rss_memory_max_under=old.pop("memory_max_under", None),
                   rss_memory_max_over=old.pop("memory_max_over", None))
    if not args.skip_memory and args.rss_memory:
        allocator = host_allocator_fraction(args.threads)
        points = memory_grid(args.threads, allocator["allocator_fraction"], args.quick, args.memory_jobs)
        errors = [p["rel_error"] for p in points]
        new.update(allocator, rss_memory_points=points, rss_memory_grid_size=len(MEMORY_SHAPES) * len(MEMORY_TOKENS)
                   * 2 * len(SPARSITIES), rss_memory_max_under=max(0.0, -min(errors)),
                   rss_memory_max_over=max(0.0, max(errors)))
    if not args.skip_memory:
        points = live_memory_grid(args.threads, args.quick, args.memory_jobs,
                                  new.get("rss_memory_points", old.get("rss_memory_points", [])))
        errors = [p["rel_error"] for p in points]
        new.update(memory_points=points, memory_grid_size=len(LIVE_SHAPES) * len(MEMORY_TOKENS) * 2 * len(SPARSITIES),
                   memory_max_under=max(0.0, -min(errors)), memory_max_over=max(0.0, max(errors)))
    result = {**old, **new}
    print(write(result))
    return result


def time_results(args) -> dict:
    load = os.getloadavg()
    rates = host_rates()
    rates.update(operator_cost(rates))
    print(f"host: {rates['host_gflops']:.1f} GFLOP/s fp32 GEMM {rates['gemm_gflops']}, "
          f"{rates['host_gbps']:.1f} GB/s, {1e6 * rates['operator_s']:.1f} us/operator, {args.threads} thread(s)",
          flush=True)
    grid = (SIZES[:1], RANKS[:1], SPARSITIES[:1]) if args.quick else (SIZES, RANKS, SPARSITIES)
    points = calibrate(*grid, rates)
    trainers = sorted({p["trainer"] for p in points})
    result = {"median_abs_error": median_abs(points),
              "median_abs_error_by_trainer": {t: median_abs([p for p in points if p["trainer"] == t])
                                              for t in trainers},
              "threads": args.threads, "quick": args.quick, **rates, "points": points,
              "deterministic_sim_time": None, "sim_time_run1": None, "sim_time_run2": None}
    end = os.getloadavg()
    result["load"] = (f"load average {load[0]:.2f} at the start, {end[0]:.2f} after the grid "
                      f"(1-minute, {os.cpu_count()} CPUs)")
    if not args.skip_determinism:
        cwd = os.getcwd()
        with tempfile.TemporaryDirectory(prefix="cost-model-", ignore_cleanup_errors=True) as tmp:
            try:
                run1, run2 = [sim_times(args.cache_dir, Path(tmp), tag) for tag in ("run1", "run2")]
            finally:
                os.chdir(cwd)
        result.update(deterministic_sim_time=bool(run1 and run1 == run2 and all(t > 0 for t in run1)),
                      sim_time_run1=run1, sim_time_run2=run2)
    return result


if __name__ == "__main__":
    main()
