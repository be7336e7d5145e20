"""The combined federation (method=combined) at epsilon in {inf, 8, 2}: quality, spent epsilon, sparsity, bytes.

``python -m benchmarks.combined --model tiny-llama`` (about 15 minutes on the shared 2-core machine at the defaults
below). FedSpine Jetsons (pruning + LoRA, arms from the bandit) and ZeroQAT phones (forward-only on packed W4A8
bases) in one fleet (80dev), all under user-level DP-FedAvg with Opacus accounting. Every run goes through the real
ServerApp code (``server.run.FederatedRun``) and the real ClientApp handlers on the in-process engine.
epsilon = inf is the same pipeline with sigma = 0 (clipped, not noised: the cost of the noise alone).
Writes docs/benchmarks/combined.md and docs/benchmarks/combined.json (one file per --model: the default name
for tiny-llama, ``combined_<model>.{md,json}`` otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
EPSILONS = [math.inf, 8.0, 2.0]


def pretrained_here(model: str) -> bool:
    """Whether the project pretrains this model itself (the tiny proxies); a GGUF or Hub model has no pretrain
    settings to override."""
    import yaml

    conf = Path(__file__).resolve().parents[1] / "conf" / "model" / f"{model}.yaml"
    return "pretrain" in (yaml.safe_load(conf.read_text()) or {})


# The proxy's schedule (docs/benchmarks/combined.md was measured with it). Any other model runs its own per-model
# settings (conf/per_model/; SmolLM2-135M: conf/per_model/fedspine/, chosen from docs/benchmarks/pruning_damage.md)
# unless --local-steps / --prune-every / --sparsity-step are given.
PROXY_SCHEDULE = {"local_steps": 4, "prune_every": 1, "sparsity_step": 0.15}


def schedule(args) -> list[str]:
    given = {k: getattr(args, k) for k in PROXY_SCHEDULE}
    if args.model == "tiny-llama":
        given = {k: PROXY_SCHEDULE[k] if v is None else v for k, v in given.items()}
    keys = {"local_steps": "client.local_steps", "prune_every": "method.fedspine.prune_every",
            "sparsity_step": "method.fedspine.sparsity_step"}
    return [f"{keys[k]}={v}" for k, v in given.items() if v is not None]


def overrides(args, eps: float) -> list[str]:
    pretrain = [f"model.pretrain.steps={args.pretrain_steps}",
                f"model.pretrain.warmup_steps={max(1, args.pretrain_steps // 10)}"] if pretrained_here(args.model) else []
    return [
        "+fleet=80dev", f"model={args.model}", "method=combined", f"rounds={args.rounds}", f"seed={args.seed}",
        f"federation.cohort_size={args.cohort}", "federation.eval_cohort_size=0",
        *schedule(args), f"privacy.target_epsilon={eps}",
        f"privacy.clip_norm={args.clip}", f"data.central_eval_windows={args.eval_windows}",
        "simulation=fast", f"cache_dir={args.cache_dir}", f"tracking.uri=sqlite:///{args.workdir}/mlflow.db",
        "tracking.experiment=benchmark-combined", "tracking.log_adapter=false", "checkpoint.enabled=false",
        *pretrain,
    ]


def run_one(args, eps: float) -> dict:
    from runconfig.load import compose
    from runconfig.plain import to_plain
    from server.run import FederatedRun
    from simulations.inprocess import InProcessGrid

    settings = compose(overrides(args, eps))
    settings.output_dir = str(Path(args.workdir) / f"eps{eps}")
    start = time.perf_counter()
    FederatedRun(settings, show_progress=False).execute(InProcessGrid(to_plain(settings), settings.fleet.size))
    return collect(settings, time.perf_counter() - start)


def collect(settings, wall_s: float) -> dict:
    from mlflow.tracking import MlflowClient

    summary = json.loads((Path(settings.output_dir) / "summary.json").read_text())
    client = MlflowClient(tracking_uri=settings.tracking.uri)
    run = client.get_run(summary["mlflow_run_id"])
    m = run.data.metrics
    history = lambda key: {h.step: h.value for h in client.get_metric_history(run.info.run_id, key)}  # noqa: E731
    classes = sorted(settings.fleet.classes)
    return {
        "epsilon_target": settings.privacy.target_epsilon,
        "epsilon": m.get("privacy/epsilon", math.inf),
        "noise_multiplier": m.get("privacy/noise_multiplier", 0.0),
        "delta": m.get("privacy/delta"),
        "ppl_base": summary["ppl_base"], "acc_base": summary["accuracy_base"],
        "ppl_final": summary["ppl_final"], "acc_final": summary["accuracy_final"],
        "fleet_sparsity": m.get("fedspine/fleet_mean_sparsity", 0.0),
        "sparsity_by_class": {c: m.get(f"fedspine/{c}/sparsity") for c in classes},
        "rank_by_class": {c: m.get(f"fedspine/{c}/rank") for c in classes},
        "bytes_up_by_class": {c: int(sum(history(f"comm/bytes_up/{c}").values())) for c in classes},
        "updates_aggregated": summary["updates_aggregated"],
        "ppl_by_round": history("eval/global_ppl"),
        "sim_time_by_round": history("clock/sim_time_s"),
        "sim_time_s": summary["sim_time_s"],
        "wall_s": wall_s,
        "local_steps": settings.client.local_steps,
        "fedspine": {k: getattr(settings.method.fedspine, k) for k in
                     ("max_ratio", "target_sparsity", "prune_every", "sparsity_step", "masks")},
        "rejected_by_reason": {k.rsplit("/", 1)[1]: int(sum(history(k).values())) for k in m
                               if k.startswith("fleet/rejected/")},
        "model": settings.model.name,
        "priced_as": summary["priced_as"],
    }


def time_to_target(row: dict, target: float) -> float | None:
    """Simulated seconds until the central perplexity first reaches ``target`` (None: never)."""
    for rnd in sorted(row["ppl_by_round"]):
        if rnd > 0 and row["ppl_by_round"][rnd] <= target:
            return row["sim_time_by_round"].get(rnd)
    return None


def render(args, rows: list[dict]) -> str:
    inf = next(r for r in rows if math.isinf(r["epsilon_target"]))
    target = inf["ppl_base"] - 0.5 * (inf["ppl_base"] - inf["ppl_final"])  # half of the noise-free improvement
    classes = sorted(rows[0]["bytes_up_by_class"])
    lines = [
        "# The combined federation under user-level DP (`python -m benchmarks.combined`)", "",
        f"Trained model: **{rows[0]['model']}** ("
        + (f"the proxy; pretrained {args.pretrain_steps} steps on the public split" if pretrained_here(args.model)
           else "pretrained, loaded as shipped") + f"). Priced model (simulated clock and bytes): **{rows[0]['priced_as']}**. Fleet 80dev (N = 80), "
        f"Poisson cohorts of expected size {args.cohort}, {args.rounds} rounds, "
        f"{rows[0].get('local_steps') or args.local_steps or PROXY_SCHEDULE['local_steps']} local steps, "
        f"clip C = {args.clip}, delta = 1/N^1.1, seed {args.seed}. Jetsons run FedSpine (bandit arms, public masks"
        + (", " + ", ".join(f"{k} {v}" for k, v in rows[0]["fedspine"].items() if k != "masks") + ")"
           if "fedspine" in rows[0] else ")") + ",",
        "phones run ZeroQAT on packed W4A8 bases; every update is clipped in the global adapter's full coordinates "
        "and noise goes on every coordinate (docs/privacy.md). epsilon = inf: sigma = 0, same pipeline.", "",
        "| epsilon target | epsilon spent | sigma | ppl final | acc final | fleet sparsity | sim time to target s |"
        " wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ttt = time_to_target(r, target)
        lines.append(f"| {r['epsilon_target']} | {r['epsilon']:.3g} | {r['noise_multiplier']:.3g} | "
                     f"{r['ppl_final']:.2f} | {r['acc_final']:.4f} | {r['fleet_sparsity']:.3f} | "
                     f"{'not reached' if ttt is None else f'{ttt:.1f}'} | {r['wall_s']:.0f} |")
    lines += ["", f"Base (before round 1): ppl {inf['ppl_base']:.2f}, accuracy {inf['acc_base']:.4f}. Target for "
              f"'time to target': ppl {target:.2f} (half of the epsilon = inf run's improvement), on the simulated "
              "clock (cost.clock=analytic).", "",
              "Upload bytes per device class over the run (ZeroQAT phones send the dense rank-16 adapter; pruned "
              "Jetsons only their sub-model's coordinates at their arm's rank, plus masks):", "",
              "| epsilon target | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for r in rows:
        lines.append(f"| {r['epsilon_target']} | " + " | ".join(str(r["bytes_up_by_class"][c]) for c in classes) + " |")
    lines += ["", "Final sparsity / rank per class (ZeroQAT classes: dense, full rank):", "",
              "| epsilon target | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for r in rows:
        cells = [f"{(r['sparsity_by_class'][c] or 0):.2f} / {r['rank_by_class'][c] or '-'}" for c in classes]
        lines.append(f"| {r['epsilon_target']} | " + " | ".join(cells) + " |")
    noisy = [r for r in rows if r["noise_multiplier"] > 0]
    per_coord = ", ".join(f"{r['noise_multiplier'] * args.clip / args.cohort:.3g} at epsilon {r['epsilon_target']}"
                          for r in noisy)
    lines += ["", f"Reading: with N = 80 users the expected cohort is {args.cohort}, so the noise added to every "
              f"coordinate of the global adapter each round has std sigma C / {args.cohort} ({per_coord}), on "
              "every coordinate, padding included, while each clipped update spreads at most C over all of them. "
              "At this population that noise outweighs the updates; user-level DP pays off on populations of "
              "thousands (docs/benchmarks/dp.md: N = 1000). Short run, one seed: read the ordering, not the "
              "digits.", ""]
    aggregated = [r.get("updates_aggregated") for r in rows]
    lines += [f"Global adapters made from at least one update, per epsilon: {aggregated}. A reply whose "
              "training loss rose by more than validation.max_loss_rise is rejected as diverged (docs/faults.md; "
              "a pruning Jetson is judged from its loss right after its last pruning step, docs/fedspine.md); "
              "the run log names each one.", ""]
    if any("rejected_by_reason" in r for r in rows):
        lines += ["Rejected replies by reason, per epsilon: "
                  + "; ".join(f"{r['epsilon_target']}: {r.get('rejected_by_reason') or 'none'}" for r in rows), ""]
    return "\n".join(lines)


def results_section(paths: tuple[Path, ...] = (DOCS / "combined_smollm2-135m.json", DOCS / "combined.json")) -> str:
    """docs/results.md's rows for the combined federation, real model first, then the proxy
    (simulations/results_report.py appends them)."""
    tables = [_results_table(p) for p in paths if p.exists()]
    if not tables:
        return ""
    return "\n".join(["## The combined federation (FedSpine Jetsons + ZeroQAT phones, user-level DP)", "", *tables])


def _results_table(path: Path) -> str:
    data = json.loads(path.read_text())
    rows = data["rows"]
    inf = next(r for r in rows if math.isinf(float(r["epsilon_target"])))
    target = inf["ppl_base"] - 0.5 * (inf["ppl_base"] - inf["ppl_final"])
    a = data["args"]
    trained = f"pretrained {a['pretrain_steps']} steps" if pretrained_here(a["model"]) else "pretrained, as shipped"
    lines = [
        f"From `python -m benchmarks.combined --model {a['model']}` ([docs/benchmarks/{path.stem}.md]"
        f"(benchmarks/{path.stem}.md)); not the same setup as the table above: trained model {rows[0]['model']} "
        f"({trained}), priced as {rows[0]['priced_as']}, fleet 80dev, expected cohort {a['cohort']}, {a['rounds']} "
        f"rounds, seed {a['seed']}; base perplexity {inf['ppl_base']:.2f}, accuracy {inf['acc_base']:.4f}. Time to "
        f"target: simulated seconds (analytic clock of the day) until ppl {target:.2f} (half the epsilon = inf "
        "run's improvement).", "",
        "| method | model | epsilon | final perplexity | final accuracy | fleet sparsity | time to target (sim s) "
        "| MB up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        r = {**r, "ppl_by_round": {int(k): v for k, v in r["ppl_by_round"].items()},
             "sim_time_by_round": {int(k): v for k, v in r["sim_time_by_round"].items()}}
        ttt = time_to_target(r, target)
        eps = "∞ (sigma 0)" if math.isinf(float(r["epsilon_target"])) else f"{r['epsilon']:.2f}"
        lines.append(f"| combined | {r['model']} | {eps} | {r['ppl_final']:.2f} | {r['acc_final']:.4f} | "
                     f"{r['fleet_sparsity']:.3f} | {'not reached' if ttt is None else f'{ttt:.1f}'} | "
                     f"{sum(r['bytes_up_by_class'].values()) / 1e6:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="conf/model/ name, e.g. tiny-llama (always explicit)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cohort", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=None, help="default: the proxy's 4, else per-model")
    parser.add_argument("--prune-every", type=int, default=None, help="default: the proxy's 1, else per-model")
    parser.add_argument("--sparsity-step", type=float, default=None, help="default: the proxy's 0.15, else per-model")
    parser.add_argument("--clip", type=float, default=0.5)
    parser.add_argument("--eval-windows", type=int, default=24)
    parser.add_argument("--pretrain-steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epsilons", default="inf,8,2")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "edgefleet"))
    parser.add_argument("--workdir", default="/tmp/edgefleet-bench-combined")
    parser.add_argument("--rewrite", action="store_true", help="re-render the .md from the .json only")
    args = parser.parse_args()
    name = "combined" if args.model == "tiny-llama" else f"combined_{args.model}"
    if args.rewrite:
        rows = json.loads((DOCS / f"{name}.json").read_text())["rows"]
        for r in rows:
            r["epsilon_target"] = float(r["epsilon_target"])
            r["ppl_by_round"] = {int(k): v for k, v in r["ppl_by_round"].items()}
            r["sim_time_by_round"] = {int(k): v for k, v in r["sim_time_by_round"].items()}
        (DOCS / f"{name}.md").write_text(render(args, rows))
        return
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    rows = [run_one(args, float(e)) for e in args.epsilons.split(",")]
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / f"{name}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str))
    (DOCS / f"{name}.md").write_text(render(args, rows))
    print((DOCS / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
