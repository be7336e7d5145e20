"""The FedSpine benchmark's statistics: per-seed targets, times to target (censored over seeds), speedups.

Pure functions of the per-seed run records ``benchmarks.fedspine`` collects (no model, no Flower).
"""

from __future__ import annotations

import numpy as np

BASELINES = ["fedavg_lora", "hetlora", "fedspine_fixed", "fedspine_random"]


def smoothed(values: list[float], window: int) -> list[float]:
    """Trailing running mean (one lucky evaluation does not count as reaching a target)."""
    return [float(np.mean(values[max(0, i - window + 1): i + 1])) for i in range(len(values))]


def seed_target(runs: dict[str, dict], key: str, window: int) -> float:
    """Half-way from the base (round 0) to the median of the methods' final (smoothed) perplexities."""
    base = next(iter(runs.values()))[key][0]
    median = float(np.median([smoothed(r[key], window)[-1] for r in runs.values()]))
    return base - 0.5 * (base - median)


def time_to(ppl: list[float], sim: list[float], target: float, window: int) -> float | None:
    for p, t in zip(smoothed(ppl, window), sim):
        if p <= target:
            return float(t)
    return None


def summarise(per_seed: dict[int, dict], seeds: list[int], key: str, window: int) -> tuple[dict, dict]:
    """(per-seed targets, per-method times to target) for one quality curve (``ppl`` or ``sparse_ppl``)."""
    targets = {seed: seed_target(per_seed[seed], key, window) for seed in seeds}
    times = {m: [time_to(per_seed[seed][m][key], per_seed[seed][m]["sim_time"], targets[seed], window)
                 for seed in seeds] for m in per_seed[seeds[0]]}
    return targets, times


def mean_or_none(times: list[float | None]) -> float | None:
    return float(np.mean(times)) if times and all(t is not None for t in times) else None


def censored_mean(times: list[float | None], totals: list[float]) -> float:
    """Mean time to target over seeds, a seed that never reached it counted at its run's total simulated time:
    a lower bound on the time it would have needed, so a baseline that misses in one seed is not dropped."""
    return float(np.mean([t if t is not None else total for t, total in zip(times, totals)]))


def speedup(times: dict[str, list], totals: dict[str, list]) -> tuple[float | None, str | None]:
    """(best baseline's censored mean time / FedSpine's censored mean time, that baseline)."""
    if "fedspine" not in times:
        return None, None
    fs = censored_mean(times["fedspine"], totals["fedspine"])
    base = {m: censored_mean(times[m], totals[m]) for m in BASELINES if m in times}
    if not base or not fs:
        return None, None
    best = min(base, key=base.get)
    return base[best] / fs, best


def per_seed_speedups(times: dict[str, list], seeds: list[int]) -> list[dict]:
    """Per seed: the baseline that reached the target first in that seed, and its time over FedSpine's."""
    out = []
    for i, seed in enumerate(seeds):
        reached = {m: times[m][i] for m in BASELINES if m in times and times[m][i] is not None}
        fs = times.get("fedspine", [None] * len(seeds))[i]
        best = min(reached, key=reached.get) if reached else None
        out.append({"seed": seed, "best_baseline": best, "speedup": reached[best] / fs if best and fs else None})
    return out


def best_baseline_final(runs: dict[str, dict], key: str, window: int) -> tuple[float, str]:
    """(the best baseline's final smoothed quality in one seed, that baseline): the bar of the second column."""
    return min((smoothed(runs[m][key], window)[-1], m) for m in BASELINES if m in runs)


def bar_speedup(bar_times: dict[str, list], setters: list[str]) -> float | None:
    """Mean time the bar-setting baseline took to reach its own final quality / FedSpine's mean time to reach it;
    None when FedSpine misses the bar in any seed (no censoring here: missing the bar is the result)."""
    fs = bar_times.get("fedspine")
    if not fs or any(t is None for t in fs):
        return None
    base = [bar_times[m][i] for i, m in enumerate(setters)]
    return float(np.mean(base)) / max(float(np.mean(fs)), 1e-9)


def summarise_priced(per_seed: dict[int, dict], seeds: list[int], methods: list[str], args) -> dict:
    """Every table of one priced model: time to target (the rule fixed before the cost model's runs), time to
    the best baseline's final quality, quality, round-time breakdown, skipped work, FedSpine's arms."""
    sparse_targets, sparse_times = summarise(per_seed, seeds, "sparse_ppl", args.smooth)
    dense_targets, dense_times = summarise(per_seed, seeds, "ppl", args.smooth)
    bars = {seed: best_baseline_final(per_seed[seed], "sparse_ppl", args.smooth) for seed in seeds}
    bar_times = {m: [time_to(per_seed[seed][m]["sparse_ppl"], per_seed[seed][m]["sim_time"], bars[seed][0],
                             args.smooth) for seed in seeds] for m in methods}
    table = {}
    for m in methods:
        runs = [per_seed[seed][m] for seed in seeds]
        totals = [r["sim_time"][-1] for r in runs]
        table[m] = {
            "time_to_target_s": mean_or_none(sparse_times[m]),
            "time_to_target_per_seed_s": sparse_times[m],
            "final_ppl": float(np.mean([smoothed(r["sparse_ppl"], args.smooth)[-1] for r in runs])),
            "final_accuracy": float(np.mean([smoothed(r["sparse_accuracy"], args.smooth)[-1] for r in runs])),
            "final_ppl_last_round": float(np.mean([r["sparse_ppl"][-1] for r in runs])),
            "dense_final_ppl": float(np.mean([smoothed(r["ppl"], args.smooth)[-1] for r in runs])),
            "dense_final_accuracy": float(np.mean([smoothed(r["accuracy"], args.smooth)[-1] for r in runs])),
            "dense_time_to_target_s": mean_or_none(dense_times[m]),
            "dense_time_to_target_per_seed_s": dense_times[m],
            "round_time_s": float(np.mean([r["sim_time"][-1] / (len(r["sim_time"]) - 1) for r in runs])),
            "round_compute_s": float(np.mean([np.mean(r["round_compute"]) for r in runs])),
            "round_transfer_s": float(np.mean([np.mean(r["round_transfer"]) for r in runs])),
            "sim_time_total_s": float(np.mean(totals)),
            "sim_time_total_per_seed_s": totals,
            "time_to_target_censored_mean_s": censored_mean(sparse_times[m], totals),
            "time_to_best_baseline_final_s": mean_or_none(bar_times[m]),  # None: missed it in a seed
            "time_to_best_baseline_final_per_seed_s": bar_times[m],
            "bytes_up_mb": float(np.mean([r["bytes_up"] for r in runs]) / 1e6),
            "skipped_memory": float(np.mean([r["skipped_memory"] for r in runs])),
            "final_fleet_sparsity": float(np.mean([r["fleet_sparsity"] for r in runs])),
            "wall_s": float(np.mean([r["wall_s"] for r in runs])),
        }
    totals = {m: [per_seed[seed][m]["sim_time"][-1] for seed in seeds] for m in methods}
    headline, best = speedup(sparse_times, totals)
    dense_speedup, dense_best = speedup(dense_times, totals)
    arm_rows = [row for seed in seeds for row in per_seed[seed].get("fedspine", {}).get("arm_log", [])]
    return {
        "priced_as": per_seed[seeds[0]][methods[0]]["priced_as"],
        "speedup_vs_best_baseline": headline,
        "best_baseline": best,
        "speedup_per_seed": per_seed_speedups(sparse_times, seeds),
        "speedup_to_best_baseline_final": bar_speedup(bar_times, [bars[seed][1] for seed in seeds]),
        "best_baseline_final_ppl": float(np.mean([bars[seed][0] for seed in seeds])),
        "best_baseline_final_baseline": [bars[seed][1] for seed in seeds],  # per seed
        "target_ppl": float(np.mean(list(sparse_targets.values()))),
        "target_ppl_per_seed": sparse_targets,
        "dense_speedup_vs_best_baseline": dense_speedup,
        "dense_best_baseline": dense_best,
        "dense_target_ppl": float(np.mean(list(dense_targets.values()))),
        "base_ppl": float(np.mean([per_seed[s][methods[0]]["sparse_ppl"][0] for s in seeds])),
        "dense_base_ppl": float(np.mean([per_seed[s][methods[0]]["ppl"][0] for s in seeds])),
        "methods": table,
        "skipped_memory": {m: table[m]["skipped_memory"] for m in methods},
        "per_class_fedspine_models": per_seed[seeds[0]].get("fedspine", {}).get("per_class", {}),
        "arms_per_class": arms_per_class(arm_rows),
        "_arm_rows": arm_rows,
    }


def arms_per_class(arm_rows: list[dict]) -> dict:
    """Per device class, over the last quarter of rounds: mean chosen rank, ratio, reached sparsity."""
    if not arm_rows:
        return {}
    last = max(r["round"] for r in arm_rows)
    late = [r for r in arm_rows if r["round"] > 0.75 * last]
    out = {}
    for cls in sorted({r["class"] for r in late}):
        rows = [r for r in late if r["class"] == cls]
        out[cls] = {k: float(np.mean([r[k] for r in rows])) for k in ("rank", "ratio", "sparsity", "time")}
    return out

