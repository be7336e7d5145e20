"""FedSpine vs baselines on +fleet=80dev: simulated time to a target perplexity, quality at equal sparsity.

``python -m benchmarks.fedspine [--seeds 0 1 2] [--rounds 24]`` runs every method of the FedSpine harness and
FedAvg-LoRA through the real strategies and ClientApp handlers, in one process (``simulations.inprocess``; the
machine is too small for a Ray fleet of 80), then writes docs/benchmarks/fedspine.{md,json} and two plots.

* Time to target: the first round whose *central* perplexity (global adapter on the dense base, held-out
  plays) is <= the seed's target, in simulated seconds (fleet/clock.py: measured compute scaled to the
  device, plus transfers over its links). Each seed pretrains its own base, so each seed has its own target:
  half-way from its base perplexity to the median of the methods' final perplexities (the curves are noisy
  and one method may end above its base, so "the worst final" is no usable target); ``target_ppl`` is their
  mean. Per method the mean over seeds (None if a seed never reaches it).
* Quality at equal sparsity: every method's final global adapter served on the base pruned one-shot to
  ``fedspine.target_sparsity`` (same LoRAPrune importance on the same public calibration windows), then
  scored on the held-out plays. The dense final perplexity is reported too.
* Per device class: the final pruned model of a FedSpine device of the class (its own structure and rank,
  global adapter merged) -- measured host latency of a batch-1 forward and its weight memory vs dense.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

METHODS = ["fedavg_lora", "hetlora", "fedspine_fixed", "fedspine_random", "fedspine"]
BASELINES = ["fedavg_lora", "hetlora", "fedspine_fixed", "fedspine_random"]
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def overrides(method: str, seed: int, rounds: int, cache: str, uri: str) -> list[str]:
    common = [
        "+fleet=80dev", f"method={method}", f"seed={seed}", f"rounds={rounds}", f"cache_dir={cache}",
        f"tracking.uri={uri}", "tracking.log_adapter=false", "tracking.experiment=fedspine-bench",
        "federation.cohort_size=12", "federation.eval_cohort_size=0",
        "client.local_steps=4", "client.batch_size=4", "client.lr=3e-3", "data.seq_len=32",
        "data.central_eval_windows=32", "model.pretrain.steps=150", "model.pretrain.warmup_steps=15",
    ]
    if method != "fedavg_lora":  # pruning step every 2 of the 4 local iterations (the paper's 20 scaled down)
        common += ["method.fedspine.prune_every=2", "method.fedspine.sparsity_step=0.25"]
    return common


def run_one(method: str, seed: int, rounds: int, cache: str, uri: str) -> dict:
    """One federated run in-process; returns its per-round history and what the final evaluation needs."""
    from runconfig.load import compose, to_plain
    from server.central_evaluation import CentralEvaluator
    from server.federation import History, simulation_concurrency
    from server.preflight import prepare
    from models.base_checkpoint import load_base_model
    from models.lora import adapter_arrays, attach_lora
    from protocol.messages import from_array_record, to_array_record
    from simulations.inprocess import InProcessGrid
    from strategies import strategy_class
    from tracking.mlflow_tracker import MlflowTracker

    settings = compose(overrides(method, seed, rounds, cache, uri))
    prepared = prepare(settings, show_progress=False)
    peft_model = attach_lora(load_base_model(prepared.base_folder), settings.method.lora, settings.seed)
    history, tracker = History(), MlflowTracker(settings)
    strategy = strategy_class(method)(settings, prepared.devices, prepared.shape,
                                      concurrency=simulation_concurrency(settings), observers=[history, tracker])
    evaluator = CentralEvaluator(peft_model, prepared.corpus, settings.data.seq_len,
                                 settings.data.central_eval_windows)
    start = time.perf_counter()
    result = strategy.start(InProcessGrid(to_plain(settings), settings.fleet.size),
                            to_array_record(adapter_arrays(peft_model)), num_rounds=rounds, evaluate_fn=evaluator)
    wall = time.perf_counter() - start
    if hasattr(strategy, "get_state"):
        tracker.log_dict(strategy.get_state(), "fedspine/state.json")
    tracker.finish()
    rows = [history.rounds[r] for r in sorted(history.rounds)]
    return {
        "settings": settings, "prepared": prepared, "strategy": strategy, "wall_s": wall,
        "adapter": from_array_record(result.arrays),
        "ppl": [r["eval/global_ppl"] for r in rows], "accuracy": [r["eval/global_accuracy"] for r in rows],
        "sim_time": [0.0] + [r.get("clock/sim_time_s", np.nan) for r in rows[1:]],
        "bytes_up": float(sum(r.get("comm/bytes_up", 0.0) for r in rows)),
        "skipped_memory": float(sum(r.get("fleet/skipped_memory", 0.0) for r in rows)),
    }


def pruned_quality(run: dict, sparsity: float) -> tuple[float, float]:
    """(perplexity, accuracy) of the run's global adapter served at ``sparsity`` (one-shot, full rank)."""
    from models.base_checkpoint import load_base_model
    from models.evaluation import evaluate_lm
    from pruning.serve import serve
    from server.central_evaluation import global_test_windows
    from textdata.corpus import windows

    s, corpus = run["settings"], run["prepared"].corpus
    base = load_base_model(run["prepared"].base_folder)
    cx, cy = windows(corpus.public_ids, s.data.seq_len, corpus.tokenizer.pad_token_id)
    idx = torch.linspace(0, len(cx) - 1, 32).round().long()
    model, _ = serve(base, run["adapter"], s.method.lora, s.method.lora.rank, rank=s.method.lora.rank,
                     sparsity=sparsity, calib_inputs=cx[idx], calib_labels=cy[idx])
    x, y = global_test_windows(corpus, s.data.seq_len, s.data.central_eval_windows)
    score = evaluate_lm(model, x, y)
    return score.perplexity, score.accuracy


def per_class_models(run: dict) -> dict:
    """Latency and weight memory of each class's final FedSpine model (median-sparsity device of the class)."""
    from models.base_checkpoint import load_base_model
    from pruning.serve import latency_ms, serve, weight_bytes
    from pruning.structure import Dims

    s, strategy = run["settings"], run["strategy"]
    base = load_base_model(run["prepared"].base_folder)
    dims = Dims.of(base.config)
    dense_ms, dense_mb = latency_ms(base, s.data.seq_len), weight_bytes(base) / 2**20
    last_rank = {row["device"]: row["rank"] for row in strategy.arm_log}
    out = {"dense": {"latency_ms": dense_ms, "weights_mib": dense_mb, "sparsity": 0.0}}
    for cls in sorted({d.class_name for d in strategy.devices}):
        devs = [i for i, st in strategy.structures.items() if strategy.devices[i].class_name == cls]
        if not devs:
            continue
        devs.sort(key=lambda i: strategy.structures[i].sparsity(dims, base.config.hidden_size))
        dev = devs[len(devs) // 2]
        structure = strategy.structures[dev]
        model, _ = serve(base, run["adapter"], s.method.lora, s.method.lora.rank, rank=last_rank[dev],
                         sparsity=0.0, calib_inputs=None, calib_labels=None, structure=structure)
        out[cls] = {"device": dev, "rank": last_rank[dev],
                    "sparsity": structure.sparsity(dims, base.config.hidden_size),
                    "latency_ms": latency_ms(model, s.data.seq_len), "weights_mib": weight_bytes(model) / 2**20,
                    "devices_pruned": len(devs)}
    return out


def seed_targets(results: dict, seeds: list[int]) -> dict[int, float]:
    """Per seed (each seed pretrains its own base): half-way from the base to the methods' median final ppl."""
    out = {}
    for i, seed in enumerate(seeds):
        base = results[next(iter(results))][i]["ppl"][0]
        median = float(np.median([runs[i]["ppl"][-1] for runs in results.values()]))
        out[seed] = base - 0.5 * (base - median)
    return out


def time_to(ppl: list[float], sim: list[float], target: float) -> float | None:
    for p, t in zip(ppl, sim):
        if p <= target:
            return float(t)
    return None


def plots(results: dict, target: float, arm_rows: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    DOCS.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, runs in results.items():
        sim = np.mean([r["sim_time"] for r in runs], axis=0)
        ppl = np.mean([r["ppl"] for r in runs], axis=0)
        ax.plot(sim, ppl, marker=".", label=method, linewidth=2.5 if method == "fedspine" else 1.5)
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.1f}")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("global perplexity (held-out plays)")
    ax.set_title("Quality vs simulated time, +fleet=80dev (mean over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "fedspine_quality_vs_time.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    classes = sorted({r["class"] for r in arm_rows})
    for cls in classes:
        rows = [r for r in arm_rows if r["class"] == cls]
        rounds = sorted({r["round"] for r in rows})
        for ax, key in zip(axes, ("ratio", "rank")):
            ax.plot(rounds, [np.mean([r[key] for r in rows if r["round"] == k]) for k in rounds], marker=".",
                    label=cls)
    axes[0].set_ylabel("chosen pruning ratio (mean over the class's devices)")
    axes[1].set_ylabel("chosen LoRA rank (mean)")
    for ax in axes:
        ax.set_xlabel("round")
    axes[1].legend(fontsize=8)
    fig.suptitle("FedSpine bandit: arms per device class (all seeds)")
    fig.tight_layout()
    fig.savefig(DOCS / "fedspine_arms_per_class.png", dpi=120)
    plt.close(fig)
    return ["fedspine_quality_vs_time.png", "fedspine_arms_per_class.png"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--cache-dir", default=os.environ.get("EDGEFLEET_CACHE", "/tmp/edgefleet-bench-cache"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from simulations.launch import quiet_frameworks

    quiet_frameworks()
    work = Path(tempfile.mkdtemp(prefix="fedspine-bench-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    os.chdir(work)  # anything a run writes to "." stays out of the repository
    t0 = time.perf_counter()
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    sparsity = None
    for seed in args.seeds:
        for method in args.methods:
            run = run_one(method, seed, args.rounds, args.cache_dir, uri)
            fs = run["settings"].method.fedspine
            sparsity = sparsity if sparsity is not None else (fs.target_sparsity if fs else 0.5)
            run["pruned_ppl"], run["pruned_accuracy"] = pruned_quality(run, sparsity)
            print(f"seed {seed} {method:16s} final ppl {run['ppl'][-1]:8.2f}  at {sparsity:.0%} sparsity "
                  f"{run['pruned_ppl']:8.2f}  sim {run['sim_time'][-1]:7.2f}s  wall {run['wall_s']:6.1f}s",
                  flush=True)
            results[method].append(run)
    targets = seed_targets(results, args.seeds)
    base_ppl = float(np.mean([r["ppl"][0] for runs in results.values() for r in runs]))
    target = float(np.mean(list(targets.values())))
    table = {}
    for method, runs in results.items():
        times = [time_to(r["ppl"], r["sim_time"], targets[seed]) for seed, r in zip(args.seeds, runs)]
        reached = [t for t in times if t is not None]
        table[method] = {
            "final_ppl": float(np.mean([r["ppl"][-1] for r in runs])),
            "final_accuracy": float(np.mean([r["accuracy"][-1] for r in runs])),
            "pruned_ppl": float(np.mean([r["pruned_ppl"] for r in runs])),
            "pruned_accuracy": float(np.mean([r["pruned_accuracy"] for r in runs])),
            "time_to_target_s": float(np.mean(reached)) if len(reached) == len(runs) else None,
            "time_to_target_per_seed_s": times,
            "sim_time_total_s": float(np.mean([r["sim_time"][-1] for r in runs])),
            "bytes_up_mb": float(np.mean([r["bytes_up"] for r in runs]) / 1e6),
            "skipped_memory": float(np.mean([r["skipped_memory"] for r in runs])),
            "final_fleet_sparsity": float(np.mean([
                r["strategy"].state_metrics()["fedspine/fleet_mean_sparsity"] if hasattr(r["strategy"], "cfg")
                else 0.0 for r in runs])),
            "wall_s": float(np.mean([r["wall_s"] for r in runs])),
        }
    fs_time = table.get("fedspine", {}).get("time_to_target_s")
    base_times = [table[m]["time_to_target_s"] for m in BASELINES if m in table and table[m]["time_to_target_s"]]
    best_baseline = min(base_times) if base_times else None
    speedup = best_baseline / fs_time if (fs_time and best_baseline) else None
    arm_rows = [row for r in results.get("fedspine", []) for row in r["strategy"].arm_log]
    per_class = per_class_models(results["fedspine"][0]) if results.get("fedspine") else {}
    images = plots(results, target, arm_rows)
    out = {
        "speedup_vs_best_baseline": speedup,
        "target_ppl": target,
        "target_ppl_per_seed": targets,
        "base_ppl": base_ppl,
        "seeds": args.seeds,
        "rounds": args.rounds,
        "equal_sparsity": sparsity,
        "methods": table,
        "per_class_fedspine_models": per_class,
        "settings": " ".join(overrides("fedspine", 0, args.rounds, "<cache>", "<uri>")[:1]
                             + overrides("fedspine", 0, args.rounds, "<cache>", "<uri>")[7:]),
        "benchmark_wall_s": time.perf_counter() - t0,
        "plots": images,
    }
    write_docs(out)
    return out


def fmt(v, spec=".2f"):
    return "not reached" if v is None else format(v, spec)


def write_docs(out: dict) -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "fedspine.json").write_text(json.dumps(out, indent=2))
    lines = [
        "# FedSpine benchmark (`python -m benchmarks.fedspine`)",
        "",
        f"+fleet=80dev, {out['rounds']} rounds, seeds {out['seeds']}, settings: `{out['settings']}`; "
        f"in-process driver (real strategies and ClientApp handlers, no Ray), one CPU thread; "
        f"wall {out['benchmark_wall_s'] / 60:.1f} min.",
        f"Target perplexity {out['target_ppl']:.2f} (mean of per-seed targets "
        f"{', '.join(f'{v:.2f}' for v in out['target_ppl_per_seed'].values())}; base {out['base_ppl']:.2f}); quality at equal sparsity = "
        f"global adapter served on the base pruned one-shot to {out['equal_sparsity']:.0%}.",
        "",
        f"**Speed-up vs the best baseline (simulated time to target): "
        f"{fmt(out['speedup_vs_best_baseline'])}x** (target of the issue: >= 1.4x with no worse quality).",
        "",
        "| method | time to target (sim s, mean) | per seed | final ppl (dense) | final acc | ppl at "
        f"{out['equal_sparsity']:.0%} sparsity | acc at {out['equal_sparsity']:.0%} | fleet sparsity | "
        "sim time total (s) | upload (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, r in out["methods"].items():
        per_seed = ", ".join(fmt(t, ".1f") for t in r["time_to_target_per_seed_s"])
        lines.append(f"| {m} | {fmt(r['time_to_target_s'])} | {per_seed} | {r['final_ppl']:.2f} | "
                     f"{r['final_accuracy']:.4f} | {r['pruned_ppl']:.2f} | {r['pruned_accuracy']:.4f} | "
                     f"{r['final_fleet_sparsity']:.2f} | {r['sim_time_total_s']:.1f} | {r['bytes_up_mb']:.1f} |")
    if out.get("notes"):
        lines += ["", "Notes: " + out["notes"]]
    lines += ["", "## Final FedSpine models per device class (seed 0; host CPU, batch 1, one thread)", "",
              "| class | device | rank | sparsity | forward latency (ms) | weights (MiB) |", "|---|---|---|---|---|---|"]
    for cls, r in out["per_class_fedspine_models"].items():
        lines.append(f"| {cls} | {r.get('device', '-')} | {r.get('rank', '-')} | {r['sparsity']:.2f} | "
                     f"{r['latency_ms']:.2f} | {r['weights_mib']:.2f} |")
    lines += ["", "![quality vs simulated time](fedspine_quality_vs_time.png)", "",
              "![arms per device class](fedspine_arms_per_class.png)", ""]
    (DOCS / "fedspine.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
