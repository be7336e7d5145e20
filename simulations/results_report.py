"""Tables and plots of a comparison, read back from MLflow (the record), written to docs/results.md."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
ARM_METRIC = re.compile(r"^fedspine/[^/]+/(ratio|rank)$")  # the bandit's mean arm per device class


@dataclass
class RunCurves:
    method: str
    seed: int
    ppl: dict[int, float]
    accuracy: dict[int, float]
    sim_time: dict[int, float]
    epsilon: dict[int, float]
    bytes_moved: float
    peak_memory_mb: dict[str, float]  # per trainer
    arms: dict[str, dict[int, float]]  # "<class>/ratio|rank" -> step -> mean arm (when a method logs them)
    priced_as: str = "trained"  # the model simulated time and bytes are priced for (cost.priced_as, cost.clock)
    model: str = "tiny-llama"  # the model that is fine-tuned (model.name; runs from before it was logged: tiny-llama)


@dataclass
class Report:
    figures: list[Path] = field(default_factory=list)
    headline: dict[str, dict] = field(default_factory=dict)
    table: str = ""
    main_plot: str = ""


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def load_curves(client: MlflowClient, method: str, seed: int, run_id: str) -> RunCurves:
    run = client.get_run(run_id)
    keys, params = run.data.metrics.keys(), run.data.params
    up, down = _history(client, run_id, "comm/bytes_up"), _history(client, run_id, "comm/bytes_down")
    return RunCurves(
        method=method,
        seed=seed,
        ppl=_history(client, run_id, "eval/global_ppl"),
        accuracy=_history(client, run_id, "eval/global_accuracy"),
        sim_time={0: 0.0, **_history(client, run_id, "clock/sim_time_s")},
        epsilon=_history(client, run_id, "privacy/epsilon") if "privacy/epsilon" in keys else {},
        bytes_moved=sum(up.values()) + sum(down.values()),
        peak_memory_mb={k.split(".", 1)[1]: max(_history(client, run_id, k).values())
                        for k in keys if k.startswith("memory/peak_rss_mb.")},
        arms={k.split("/", 1)[1]: _history(client, run_id, k) for k in keys if ARM_METRIC.match(k)},
        # runs from before the cost model carry no cost.* params: host-measured compute, the trained model
        priced_as=f"{params.get('cost.priced_as', 'trained')}, {params.get('cost.clock', 'host_scaled')} clock",
        model=params.get("model.name", "tiny-llama"),
    )


def time_to_target(c: RunCurves, target: float) -> float | None:
    for step in sorted(c.ppl):
        if c.ppl[step] <= target:
            return c.sim_time.get(step)
    return None


def _fmt(values: list[float | None], digits: int = 2) -> str:
    real = [v for v in values if v is not None]
    if not real:
        return "not reached"
    mean = f"{np.mean(real):.{digits}f}"
    suffix = f" ± {np.std(real):.{digits}f}" if len(real) > 1 else ""
    missing = f" ({len(values) - len(real)} of {len(values)} not reached)" if len(real) < len(values) else ""
    return mean + suffix + missing


def _plot_quality(by_method: dict[str, list[RunCurves]], target: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (method, runs) in enumerate(sorted(by_method.items())):
        for j, c in enumerate(runs):
            steps = sorted(set(c.ppl) & set(c.sim_time))
            ax.plot([c.sim_time[s] for s in steps], [c.ppl[s] for s in steps], color=f"C{i}", alpha=0.85,
                    marker="o", markersize=3, label=method if j == 0 else None)
    ax.axhline(target, color="grey", linestyle="--", label=f"target {target:.1f}")
    ax.set_xlabel("simulated fleet time (s)")
    ax.set_ylabel("global test perplexity")
    ax.set_title("Quality against simulated time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_epsilon(by_method: dict[str, list[RunCurves]], path: Path) -> bool:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = False
    for i, (method, runs) in enumerate(sorted(by_method.items())):
        for j, c in enumerate(runs):
            if c.epsilon:
                steps = sorted(c.epsilon)
                ax.plot(steps, [c.epsilon[s] for s in steps], color=f"C{i}", label=method if j == 0 else None)
                drawn = True
    if drawn:
        ax.set_xlabel("round")
        ax.set_ylabel("epsilon spent")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def _plot_memory(by_method: dict[str, list[RunCurves]], path: Path) -> bool:
    peaks: dict[str, float] = defaultdict(float)
    for runs in by_method.values():
        for c in runs:
            for trainer, mb in c.peak_memory_mb.items():
                peaks[trainer] = max(peaks[trainer], mb)
    if not peaks:
        return False
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(list(peaks), list(peaks.values()), color="C2")
    ax.set_ylabel("peak RSS of a client worker (MB)")
    ax.set_title("Memory per trainer")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _plot_arms(by_method: dict[str, list[RunCurves]], path: Path) -> bool:
    series = [(m, k, v) for m, runs in by_method.items() for c in runs[:1] for k, v in c.arms.items()]
    if not series:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, quantity in zip(axes, ("ratio", "rank")):
        for i, (method, key, values) in enumerate(sorted(s for s in series if s[1].endswith(quantity))):
            steps = sorted(values)
            ax.plot(steps, [values[s] for s in steps], color=f"C{i % 10}", marker="o", markersize=3,
                    label=f"{method}: {key.rsplit('/', 1)[0]}")
        ax.set_xlabel("round")
        ax.set_ylabel("mean pruning ratio" if quantity == "ratio" else "mean LoRA rank")
        ax.legend(fontsize=7)
    fig.suptitle("Bandit arm choices per device class (first seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def build(client: MlflowClient, summaries: dict, target_ppl: float | None, docs_file: Path) -> Report:
    by_method: dict[str, list[RunCurves]] = defaultdict(list)
    for job, summary in summaries.values():
        by_method[job.method].append(load_curves(client, job.method, job.seed, summary["mlflow_run_id"]))
    bases = [c.ppl[0] for runs in by_method.values() for c in runs if 0 in c.ppl]
    target = float(target_ppl) if target_ppl else 0.9 * float(np.mean(bases))
    figures_dir = docs_file.parent / "results"
    figures_dir.mkdir(parents=True, exist_ok=True)
    report = Report()

    quality = figures_dir / "quality_vs_time.png"
    _plot_quality(by_method, target, quality)
    report.figures.append(quality)
    report.main_plot = str(quality.relative_to(docs_file.parent))
    for name, draw in (("epsilon_vs_rounds.png", _plot_epsilon), ("memory_per_trainer.png", _plot_memory),
                       ("arms_per_class.png", _plot_arms)):
        if draw(by_method, figures_dir / name):
            report.figures.append(figures_dir / name)

    priced = ", ".join(sorted({c.priced_as for runs in by_method.values() for c in runs}))
    trained = ", ".join(sorted({c.model for runs in by_method.values() for c in runs}))
    rows = [f"| method | seeds | final perplexity ({trained} fine-tuned) | final accuracy | "
            f"time to target (sim s, priced as {priced}) | "
            "MB moved | peak client worker RSS (MB) | epsilon |", "|---|---|---|---|---|---|---|---|"]
    for method, runs in sorted(by_method.items()):
        last = [c.ppl[max(c.ppl)] for c in runs]
        acc = [c.accuracy[max(c.accuracy)] for c in runs]
        ttt = [time_to_target(c, target) for c in runs]
        eps = [c.epsilon[max(c.epsilon)] if c.epsilon else None for c in runs]
        mem = max((mb for c in runs for mb in c.peak_memory_mb.values()), default=None)
        rows.append(
            f"| {method} | {len(runs)} | {_fmt(last)} | {_fmt(acc, 4)} | {_fmt(ttt)} | "
            f"{_fmt([c.bytes_moved / 1e6 for c in runs], 1)} | {mem if mem is None else f'{mem:.0f}'} | "
            f"{_fmt(eps) if any(e is not None for e in eps) else '∞ (no DP)'} |"
        )
        report.headline[method] = {"final_ppl": float(np.mean(last)), "final_accuracy": float(np.mean(acc)),
                                   "time_to_target_s": None if None in ttt else float(np.mean(ttt))}
    report.table = "\n".join(rows)
    figures = "\n".join(f"![{p.stem}](results/{p.name})" for p in report.figures)
    docs_file.write_text(
        "# Results\n\n" + claims_section() + "\n## Methods compared on the same fleet, data and seeds\n\n"
        "Regenerated by `python -m simulations.compare` (do not edit by hand). Target perplexity for "
        f"\"time to target\": {target:.2f} (simulated fleet seconds until the global test perplexity first "
        "reaches it). Mean ± std over seeds.\n\n" + report.table + "\n\n" + figures + "\n"
        + ("\n" + combined if (combined := combined_results_section()) else "")
    )
    return report


def claims_section() -> str:
    """The papers' claims table (benchmarks/claims.py reads the benchmarks' JSON; kept when this file is regenerated)."""
    from benchmarks.claims import section

    return section()


def combined_results_section() -> str:
    """The combined federation's rows (benchmarks/combined.py writes them; kept when this file is regenerated)."""
    from benchmarks.combined import results_section

    return results_section()


def update_readme(readme: Path, report: Report) -> None:
    """Replace the README's results block with the comparison's table and main plot."""
    text = readme.read_text()
    block = (f"{README_START}\n{report.table}\n\n![quality against simulated time](docs/{report.main_plot})\n"
             f"{README_END}")
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)
