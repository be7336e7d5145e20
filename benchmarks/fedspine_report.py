"""The FedSpine benchmark's plots and docs/benchmarks/fedspine.{md,json} (from ``benchmarks.fedspine``'s results)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def plots(per_seed: dict, seeds: list[int], target: float, arm_rows: list[dict], sparsity: float, priced_as: str,
          suffix: str = "") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    DOCS.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for method in per_seed[seeds[0]]:
        runs = [per_seed[s][method] for s in seeds]
        sim = np.mean([r["sim_time"] for r in runs], axis=0)
        for ax, key in zip(axes, ("sparse_ppl", "ppl")):
            ax.plot(sim, np.mean([r[key] for r in runs], axis=0), marker=".", label=method,
                    linewidth=2.5 if method == "fedspine" else 1.5)
    axes[0].axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.1f}")
    axes[0].set_ylabel(f"perplexity served at {sparsity:.0%} sparsity")
    axes[1].set_ylabel("perplexity on the dense base")
    for ax in axes:
        ax.set_xlabel("simulated time (s)")
        ax.legend(fontsize=8)
    fig.suptitle(f"Quality vs simulated time priced as {priced_as}, +fleet=80dev (mean over seeds; held-out plays)")
    fig.tight_layout()
    fig.savefig(DOCS / f"fedspine_quality_vs_time{suffix}.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    classes = sorted({r["class"] for r in arm_rows})
    for cls in classes:
        rows = [r for r in arm_rows if r["class"] == cls]
        rounds = sorted({r["round"] for r in rows})
        for ax, key in zip(axes, ("rank", "ratio", "time")):
            ax.plot(rounds, [np.mean([r[key] for r in rows if r["round"] == k]) for k in rounds], marker=".",
                    label=cls)
    axes[0].set_ylabel("chosen LoRA rank (mean over the class's devices)")
    axes[1].set_ylabel("chosen pruning ratio (mean)")
    axes[2].set_ylabel("device completion time (sim s, mean)")
    for ax in axes:
        ax.set_xlabel("round")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"FedSpine bandit: arms per device class (all seeds), priced as {priced_as}")
    fig.tight_layout()
    fig.savefig(DOCS / f"fedspine_arms_per_class{suffix}.png", dpi=120)
    plt.close(fig)
    return [f"fedspine_quality_vs_time{suffix}.png", f"fedspine_arms_per_class{suffix}.png"]


def fmt(v, spec=".2f"):
    return "not reached" if v is None else format(v, spec)


def priced_section(r: dict, out: dict) -> list[str]:
    """The tables of one priced model."""
    sp = f"{out['equal_sparsity']:.0%}"
    lines = [
        f"## Priced as {r['priced_as']}",
        "",
        f"**Speed-up vs the best baseline ({r['best_baseline']}), simulated time to target at {sp} sparsity: "
        f"{fmt(r['speedup_vs_best_baseline'])}x** (target of the issue: >= 1.4x with no worse quality; target "
        f"perplexity {r['target_ppl']:.2f}, base {r['base_ppl']:.2f}). "
        f"Time to the best baseline's final quality at {sp} ({r['best_baseline_final_ppl']:.2f}, mean over seeds; "
        f"set per seed by {', '.join(r['best_baseline_final_baseline'])}): "
        + (f"{fmt(r['speedup_to_best_baseline_final'])}x. " if r['speedup_to_best_baseline_final'] is not None
           else "FedSpine does not reach it in every seed. ") +
        f"On the dense base (target {r['dense_target_ppl']:.2f}): {fmt(r['dense_speedup_vs_best_baseline'])}x vs "
        f"{r['dense_best_baseline']}.",
        "Per seed, against the baseline that reached the target first in that seed: " + "; ".join(
            f"seed {x['seed']}: " + (f"{fmt(x['speedup'])}x" if x["speedup"] is not None else "n/a (FedSpine at 0 s)")
            + f" vs {x['best_baseline']}" for x in r["speedup_per_seed"]) + ".",
        "",
        f"| method | time to target (sim s; misses at total) | per seed | time to best baseline's final (s; per seed) | "
        f"final ppl at {sp} | final acc at {sp} | dense final ppl | round time (sim s) | of which compute / transfer "
        "(slowest reply) | skipped (memory) | fleet sparsity | upload (MB, priced) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, x in r["methods"].items():
        per_seed = ", ".join(fmt(t, ".1f") for t in x["time_to_target_per_seed_s"])
        lines.append(f"| {m} | {x['time_to_target_censored_mean_s']:.1f} | {per_seed} | "
                     f"{fmt(x['time_to_best_baseline_final_s'], '.1f')} ("
                     f"{', '.join(fmt(t, '.0f') for t in x['time_to_best_baseline_final_per_seed_s'])}) | "
                     f"{x['final_ppl']:.2f} | {x['final_accuracy']:.4f} | "
                     f"{x['dense_final_ppl']:.2f} | {x['round_time_s']:.2f} | {x['round_compute_s']:.2f} / "
                     f"{x['round_transfer_s']:.2f} | {x['skipped_memory']:.1f} | {x['final_fleet_sparsity']:.2f} | "
                     f"{x['bytes_up_mb']:.1f} |")
    lines += ["", f"FedSpine's arms per device class (last quarter of the rounds, all seeds), priced as {r['priced_as']}:",
              "", "| class | rank | pruning ratio | sparsity reached | completion time (sim s) |", "|---|---|---|---|---|"]
    for cls, x in r["arms_per_class"].items():
        lines.append(f"| {cls} | {x['rank']:.1f} | {x['ratio']:.2f} | {x['sparsity']:.2f} | {x['time']:.2f} |")
    lines += ["", f"![quality vs simulated time, {r['priced_as']}]({r['plots'][0]})", "",
              f"![arms per device class, {r['priced_as']}]({r['plots'][1]})", ""]
    return lines


def write_docs(out: dict) -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "fedspine.json").write_text(json.dumps(out, indent=2))
    sp = f"{out['equal_sparsity']:.0%}"
    lines = [
        "# FedSpine benchmark (`python -m benchmarks.fedspine`)",
        "",
        f"{out['rounds']} rounds, seeds {out['seeds']}, settings: `{out['settings']}`; in-process driver (real "
        f"strategies and ClientApp handlers, no Ray), one CPU thread per run; wall {out['benchmark_wall_s'] / 60:.1f} "
        "min. **Learning runs on the trained proxy (tiny-llama); simulated time, bytes and memory are priced for "
        "the model each section names** (`cost=`, the analytic clock of fleet/pricing.py: deterministic, host load "
        "does not enter it).",
        f"Quality = {out['quality']}: every round, the global adapter is merged into the base pruned one-shot to "
        f"{sp} (LoRAPrune importance on the same public calibration windows) and scored on the held-out plays. "
        f"Target (rule fixed before these runs): per seed, half-way from the base at {sp} sparsity to the median of "
        f"the methods' final perplexities, on a running mean over {out['smooth_rounds']} rounds. Speed-up = the best "
        "baseline's mean time to target over seeds / FedSpine's, a seed where a method never reached it counted at "
        "its run's total simulated time (a lower bound). Second column: time to reach the best baseline's own final "
        f"quality at {sp} in that seed (not censored: a method that never gets there shows 'not reached').",
        "",
    ]
    for r in out["by_priced_model"].values():
        lines += priced_section(r, out)
    if out.get("notes"):
        lines += ["Notes: " + out["notes"], ""]
    lines += ["## Final FedSpine models per device class (first seed, first priced model; host CPU, batch 1, one "
              "thread; the trained proxy)", "",
              "| class | device | rank | sparsity | forward latency (ms) | weights (MiB) |", "|---|---|---|---|---|---|"]
    for cls, r in out["per_class_fedspine_models"].items():
        lines.append(f"| {cls} | {r.get('device', '-')} | {r.get('rank', '-')} | {r['sparsity']:.2f} | "
                     f"{r['latency_ms']:.2f} | {r['weights_mib']:.2f} |")
    (DOCS / "fedspine.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

