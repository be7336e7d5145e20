"""FedSpine vs baselines on +fleet=80dev: simulated time to a target perplexity, quality at equal sparsity.

``python -m benchmarks.fedspine [--model smollm2-135m|tiny-llama] [--scale small|full] [--seeds 0 1 2] [--rounds N]
[--cost ...] [--jobs 2]`` runs every method of the FedSpine harness and FedAvg-LoRA through the real strategies
and ClientApp handlers (``simulations.inprocess``; the machine is too small for a Ray fleet of 80), then writes
docs/benchmarks/fedspine.{md,json} and plots. Every finished federated run is also written as JSON under
``--runs-dir`` (a run cut short keeps what it measured; ``--report-only`` summarises what is there).

``--model smollm2-135m`` (the default): the real SmolLM2-135M-Instruct is fine-tuned AND priced (``cost=trained``),
with the per-model FedSpine settings (conf/per_model/fedspine/smollm2-135m_<method>.yaml: arms below the
query-head cliff, max ratio 0.15). Its results go to ``by_model["smollm2-135m"]`` of fedspine.json and the first
section of fedspine.md. ``--model tiny-llama``: the proxy benchmark as it was (pretrained 3.4M model, priced as
``--cost`` models, the adapter-dependent one-shot scoring and the v1 rule below); its results are the JSON's
top-level keys and the proxy section. ``--scale full``: the larger setting (12 rounds, cohort 40) for a GPU machine.

RULE v2 (real model; written and committed before any real-model run, not changed after seeing curves):

* Same round 0 for every method. Every adapter starts at zero contribution (PEFT's LoRA init, B = 0, for the
  rank-8 FedAvg-LoRA and the rank-16 HetLoRA/FedSpine global adapters alike), and the one-shot pruning used to
  score "quality at equal sparsity" takes its masks from the dense base alone: its public activation scores
  (pruning.importance.public_scores, the public split), the same structure for every method, round and seed.
  So round 0 is the base itself, dense and pruned, identical across methods within a seed; the benchmark
  checks that (max relative spread of round-0 dense and sparse ppl across methods) and reports it.
* Two sparsity levels are scored every round (global adapter merged into the pruned base, held-out plays):
  level 0.5 -- "50% sparsity" as the issue asks (half the MLP channels; within_groups then drops a third of the
  query heads: 43.8% of the layers' parameters) -- and level 0.15, the deployable sparsity of this model (the
  per-model max ratio: above 1/6 a third of the query heads go and one-shot ppl jumps from ~144 to ~1,500;
  docs/benchmarks/pruning_damage.md puts the pruned base at ~3,100 at 0.5).
* DECISION LEVEL = 0.15. The time-to-target curve and the target's quality condition are both evaluated at the
  deployable level 0.15, because at 0.5 the base is already ~24x worse than dense before any training and no
  deployment serves it. Quality at 0.5 (ppl and next-token accuracy) is reported next to it with its own
  issue-literal pass/fail line, and the speed-ups on the 0.5 and dense curves are reported too; neither enters
  the headline verdict.
* Target, per seed, at the decision level: T = b0 - 0.5 * (b0 - F*), with b0 the common round-0 ppl and F* the
  lowest final ppl among the four baselines (FedAvg-LoRA, HetLoRA, fixed arms, random arms): half of the best
  baseline's improvement, set by baselines only (so some baseline always reaches it). Final = last round
  (``--smooth 1``: no running mean at this handful of rounds). If no baseline improves on b0, there is no
  target and no speed-up.
* Time to target = simulated seconds (analytic clock of fleet/pricing.py, which includes the per-step operator
  overhead term, issue 21) at the end of the first round r >= 1 whose ppl <= T. Speed-up = the best baseline's
  mean time over seeds / FedSpine's, a seed where a method never reaches T counted at its run's total simulated
  time (censored: a lower bound on that method's time). Best baseline = the one with the lowest such mean.
  Per-seed column: that seed's fastest baseline's time / FedSpine's.
* Verdict (issue 24's target): PASS iff speed-up >= 1.4 AND FedSpine's final ppl at the decision level (mean
  over seeds) <= the lowest baseline mean final ppl there. Issue-literal line: the same quality comparison at
  level 0.5 (ppl; accuracy reported).

RULE v1 (tiny-llama proxy, unchanged): quality at ``--sparsity`` with LoRAPrune importance of each method's own
global adapter on 32 public windows; target per seed half-way from the first method's round-0 ppl to the median
of the methods' final ppl (running mean over ``--smooth`` 3 rounds); censored speed-up as above.

Also, per device class: the final pruned model of a FedSpine device of the class (median sparsity of the class,
its own structure and rank, global adapter merged): host-measured latency of a batch-1 forward and weight memory,
and the priced inference latency (analytic clock: one forward of ``data.seq_len`` tokens at the class's
inference-kernel efficiency, DRAM bandwidth and per-operator cost) and priced weight memory (fp16 as stored).
Devices differ within a class (``fleet.link_spread``, ``fleet.compute_spread``): a class label does not tell a
device's speed, the situation FedSpine's bandit is for.
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
MODELS = ["smollm2-135m", "tiny-llama"]
SCALES = ["small", "full"]

# Per (model, scale): the settings every run shares, and the benchmark's defaults. The real model's small scale
# is sized by a timing probe on the 2-core host (one FedSpine round); full is for a machine with a GPU.
PROFILES = {
    "tiny-llama": {  # the proxy benchmark as it was: pretrained 3.4M model, priced as other models
        "small": {"rounds": 12, "cost": ["smollm2-135m", "llama-3.2-1b"], "levels": [0.5], "decision": 0.5,
                  "masks": "adapter", "smooth": 3, "rule": "v1", "settings": [
                      "federation.cohort_size=40", "client.local_steps=4", "client.batch_size=4", "client.lr=3e-3",
                      "data.seq_len=32", "data.central_eval_windows=96", "model.pretrain.steps=150",
                      "model.pretrain.warmup_steps=15"],
                  "fedspine": ["method.fedspine.prune_every=2", "method.fedspine.sparsity_step=0.25"]},
    },
    "smollm2-135m": {  # fine-tuned and priced as itself; method.fedspine from conf/per_model/fedspine/
        "small": {"rounds": 4, "cost": ["trained"], "levels": [0.5, 0.15], "decision": 0.15, "masks": "base",
                  "smooth": 1, "rule": "v2", "settings": [
                      "federation.cohort_size=6", "client.local_steps=5", "client.batch_size=4",
                      "data.central_eval_windows=16"],
                  "fedspine": []},
        "full": {"rounds": 12, "cost": ["trained"], "levels": [0.5, 0.15], "decision": 0.15, "masks": "base",
                 "smooth": 1, "rule": "v2", "settings": [
                     "federation.cohort_size=40", "client.local_steps=5", "client.batch_size=4",
                     "data.central_eval_windows=96"],
                 "fedspine": []},
    },
}
PROFILES["tiny-llama"]["full"] = PROFILES["tiny-llama"]["small"]  # the proxy's setting is already the full one


def overrides(method: str, seed: int, rounds: int, cache: str, uri: str, extra: tuple[str, ...] = (),
              cost: str = "smollm2-135m", model: str = "tiny-llama", scale: str = "small") -> list[str]:
    """The Hydra overrides of one run. ``model=tiny-llama`` pretrains the proxy (model.pretrain.*); the real
    model is pretrained and takes none."""
    profile = PROFILES[model][scale]
    common = [
        "+fleet=80dev", f"model={model}",
        f"method={method}", f"seed={seed}", f"rounds={rounds}", f"cache_dir={cache}", f"cost={cost}",
        f"tracking.uri={uri}", "tracking.log_adapter=false", "tracking.experiment=fedspine-bench",
        "tracking.generations=0", f"output_dir=fedspine-{model}-{cost}-seed{seed}-{method}",  # relative to work dir
        "federation.eval_cohort_size=0", "fleet.link_spread=0.5", "fleet.compute_spread=0.3",
        *profile["settings"],
    ]
    if method != "fedavg_lora":
        common += profile["fedspine"]
    return common + [e for e in extra if method != "fedavg_lora" or not e.startswith("method.")]


def level_key(level: float) -> str:
    return f"{level:g}"


class SparseAndDenseEvaluator:
    """Each round: the global adapter on the dense base (``eval/global_*``) and served as deployed at each of
    the benchmark's sparsity levels (base pruned one-shot, adapter merged; :func:`pruning.serve.serve`).

    ``masks="base"`` (rule v2): the structure comes from the dense base's public activation scores, the same for
    every method and round, so an adapter with B = 0 scores exactly the pruned base. ``masks="adapter"`` (rule
    v1, the proxy): LoRAPrune importance of the global adapter on 32 public windows, recomputed every round."""

    def __init__(self, dense, settings, prepared, levels: list[float], masks: str) -> None:
        from models.base_checkpoint import load_base_model
        from pruning.structure import Dims
        from textdata.corpus import windows

        self.dense, self.settings, self.levels = dense, settings, list(levels)
        corpus = prepared.corpus
        self.base = load_base_model(prepared.base_folder)
        self.inputs, self.labels = dense.inputs, dense.labels  # the same held-out windows as the dense score
        self.structures = {}
        if masks == "base":
            from pruning.importance import public_scores
            from pruning.structure import Structure, select

            dims = Dims.of(self.base.config)
            heads, channels = public_scores(prepared.base_folder, corpus, settings.data.seq_len, dims)
            rule = settings.method.fedspine.head_rule if settings.method.fedspine else "within_groups"
            self.structures = {lv: select(heads, channels, Structure.dense(dims), dims, lv, rule) for lv in levels}
        else:
            cx, cy = windows(corpus.public_ids, settings.data.seq_len, corpus.tokenizer.pad_token_id)
            idx = torch.linspace(0, len(cx) - 1, 32).round().long()
            self.calib = cx[idx], cy[idx]

    def sparse_score(self, adapter: dict, level: float):
        from models.evaluation import evaluate_lm
        from pruning.serve import serve

        lora = self.settings.method.lora
        structure = self.structures.get(level)
        calib = (None, None) if structure is not None else self.calib
        model, _ = serve(self.base, adapter, lora, lora.rank, rank=lora.rank, sparsity=level,
                         calib_inputs=calib[0], calib_labels=calib[1], structure=structure)
        return evaluate_lm(model, self.inputs, self.labels)

    def __call__(self, server_round: int, arrays):
        from flwr.app import MetricRecord

        from protocol.messages import from_array_record

        metrics = dict(self.dense(server_round, arrays))
        adapter = from_array_record(arrays)
        for i, level in enumerate(self.levels):
            score = self.sparse_score(adapter, level)
            tag = "sparse" if i == 0 else f"sparse{round(level * 100)}"  # eval/sparse_*: the first level
            metrics.update({f"eval/{tag}_ppl": score.perplexity, f"eval/{tag}_accuracy": score.accuracy})
        return MetricRecord(metrics)


def run_one(method: str, seed: int, rounds: int, cache: str, uri: str, extra: tuple[str, ...] = (),
            cost: str = "smollm2-135m", model: str = "tiny-llama", scale: str = "small",
            levels: list[float] | None = None, masks: str | None = None) -> dict:
    """One federated run in-process (server.run.FederatedRun: the ServerApp's wiring, checkpoints and MLflow
    included); returns its per-round history (dense and sparse quality) and final state."""
    from protocol.messages import from_array_record
    from runconfig.load import compose
    from runconfig.plain import to_plain
    from server.run import FederatedRun
    from simulations.inprocess import InProcessGrid

    profile = PROFILES[model][scale]
    levels = list(levels or profile["levels"])
    settings = compose(overrides(method, seed, rounds, cache, uri, extra, cost, model, scale))
    run = FederatedRun(settings, show_progress=False).setup()
    initial = from_array_record(run.initial)
    initial_b = max(float(np.abs(v).max()) for k, v in initial.items() if "lora_B" in k)  # 0: starts at the base
    run.evaluate_fn = SparseAndDenseEvaluator(run.evaluator, settings, run.prepared, levels,
                                              masks or profile["masks"])
    start = time.perf_counter()
    with InProcessGrid(to_plain(settings), settings.fleet.size) as grid:
        result = run.run(grid)
    wall = time.perf_counter() - start
    strategy = run.strategy
    run.tracker.log_dict(strategy.get_state(), "fedspine/state.json")
    run.cleanup()
    rows = [run.history.rounds[r] for r in sorted(run.history.rounds)]
    curves = {}
    for i, level in enumerate(levels):
        tag = "sparse" if i == 0 else f"sparse{round(level * 100)}"
        curves[level_key(level)] = {"ppl": [r[f"eval/{tag}_ppl"] for r in rows],
                                    "accuracy": [r[f"eval/{tag}_accuracy"] for r in rows]}
    first = curves[level_key(levels[0])]
    return {
        "settings": settings, "prepared": run.prepared, "strategy": strategy, "wall_s": wall,
        "adapter": from_array_record(result.arrays), "initial_lora_b_max": initial_b,
        "ppl": [r["eval/global_ppl"] for r in rows], "accuracy": [r["eval/global_accuracy"] for r in rows],
        "sparse_ppl": first["ppl"], "sparse_accuracy": first["accuracy"], "levels": curves,
        "sim_time": [0.0] + [r.get("clock/sim_time_s", np.nan) for r in rows[1:]],
        "bytes_up": float(sum(r.get("cost/bytes_up", 0.0) for r in rows)),  # at the priced model's shapes
        "skipped_memory": float(sum(r.get("fleet/skipped_memory", 0.0) for r in rows)),
        "round_compute": [r.get("clock/round_compute_s", 0.0) for r in rows[1:]],
        "round_transfer": [r.get("clock/round_transfer_s", 0.0) for r in rows[1:]],
        "priced_as": strategy.pricer.label,
    }


def priced_inference(strategy, device_index: int, level: float, seq_len: int) -> dict:
    """The analytic clock's price of one inference forward (``seq_len`` tokens, batch 1, no adapter: it is
    merged) of the model pruned to ``level`` on the device: its class's inference-kernel efficiency (the
    ``zeroqat`` entry, forward passes), DRAM bandwidth and per-operator cost; weights as stored (param_bytes)."""
    from fleet.cost_model import forward_cost

    pricer, device = strategy.pricer, strategy.devices[device_index]
    p = device.profile
    kept = pricer.kept(level)
    cost = forward_cost(pricer.shape, kept, 1, (), seq_len, seq_len, pricer.kernels)
    seconds = cost.seconds(p.peak_gflops * 1e9 * p.efficiency["zeroqat"], pricer.bandwidth(device),
                           p.operator_us * 1e-6)
    return {"priced_latency_ms": seconds * 1e3,
            "priced_weights_mib": pricer.shape.num_params(kept) * pricer.kernels.weight_bytes / 2**20}


def per_class_models(run: dict) -> dict:
    """Latency and weight memory of each class's final FedSpine model (median-sparsity device of the class):
    measured on the host (batch-1 forward) and priced on the class's device (analytic clock)."""
    from models.base_checkpoint import load_base_model
    from pruning.serve import latency_ms, serve, weight_bytes
    from pruning.structure import Dims

    s, strategy = run["settings"], run["strategy"]
    base = load_base_model(run["prepared"].base_folder)
    dims = Dims.of(base.config)
    dense_ms, dense_mb = latency_ms(base, s.data.seq_len), weight_bytes(base) / 2**20
    last_rank = {row["device"]: row["rank"] for row in strategy.arm_log}
    out = {"dense": {"latency_ms": dense_ms, "weights_mib": dense_mb, "sparsity": 0.0,
                     "host_threads": torch.get_num_threads()}}
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
                    "devices_pruned": len(devs),
                    "dense_priced": priced_inference(strategy, dev, 0.0, s.data.seq_len),
                    **priced_inference(strategy, dev, structure.level(dims), s.data.seq_len)}
    return out


def plain_record(run: dict, method: str, with_models: bool) -> dict:
    """What the summary needs of one run, as plain JSON-able data."""
    from strategies.fedspine import FedSpine

    strategy = run["strategy"]
    fedspine_like = isinstance(strategy, FedSpine)
    keys = ("ppl", "accuracy", "sparse_ppl", "sparse_accuracy", "levels", "sim_time", "bytes_up", "skipped_memory",
            "wall_s", "round_compute", "round_transfer", "priced_as", "initial_lora_b_max")
    return {
        **{k: run[k] for k in keys},
        "fleet_sparsity": strategy.state_metrics()["fedspine/fleet_mean_sparsity"] if fedspine_like else 0.0,
        "arm_log": list(strategy.arm_log) if fedspine_like else [],
        "per_class": per_class_models(run) if (with_models and method == "fedspine") else {},
    }


def run_file(runs_dir: Path, cost: str, seed: int, method: str) -> Path:
    return runs_dir / f"{cost}-seed{seed}-{method}.json"


def run_task(task: dict) -> dict:
    """One (priced model, seed, method) run; its record is written to ``task["path"]`` as soon as it ends."""
    torch.set_num_threads(task["threads"])
    from simulations.launch import quiet_frameworks

    quiet_frameworks()
    os.chdir(task["work"])  # anything a run writes to "." stays out of the repository
    cost, seed, method = task["cost"], task["seed"], task["method"]
    uri = f"sqlite:///{Path(task['work']) / f'mlflow-{cost}-seed{seed}-{method}.db'}"
    run = run_one(method, seed, task["rounds"], task["cache"], uri, tuple(task["extra"]), cost, task["model"],
                  task["scale"], task["levels"], task["masks"])
    record = {**plain_record(run, method, task["with_models"]), "task": {k: task[k] for k in TASK_KEYS}}
    path = Path(task["path"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, default=float))
    tmp.rename(path)
    lv = level_key(task["levels"][-1])
    print(f"[{task['model']} {cost}] seed {seed} {method:16s} ppl {run['ppl'][0]:9.2f} -> {run['ppl'][-1]:9.2f}"
          f"  at level {lv}: {run['levels'][lv]['ppl'][0]:9.2f} -> {run['levels'][lv]['ppl'][-1]:9.2f}"
          f"  sim {run['sim_time'][-1]:7.2f}s  wall {run['wall_s']:6.1f}s", flush=True)
    return record


TASK_KEYS = ("model", "scale", "cost", "seed", "method", "rounds", "levels", "masks", "extra")


def load_runs(tasks: list[dict]) -> dict:
    """{(cost, seed, method): record} of the tasks whose run file exists and was made with the same settings."""
    out = {}
    for t in tasks:
        path = Path(t["path"])
        if path.exists():
            record = json.loads(path.read_text())
            if record.get("task") == {k: t[k] for k in TASK_KEYS}:
                out[(t["cost"], t["seed"], t["method"])] = record
    return out


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="smollm2-135m",
                        help="smollm2-135m: the real model, trained and priced; tiny-llama: the proxy benchmark")
    parser.add_argument("--scale", choices=SCALES, default="small",
                        help="small: the 2-core host's setting; full: the larger setting for a GPU machine")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=None, help="default: the model's profile (PROFILES)")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--cost", nargs="+", default=None,
                        help="priced models (conf/cost/); default: the profile's (trained for the real model)")
    parser.add_argument("--sparsity", type=float, default=None,
                        help="rule v1 (tiny-llama): the equal sparsity every method is served at (default 0.5)")
    parser.add_argument("--smooth", type=int, default=None, help="rounds in the running mean used for time to "
                        "target (default: the profile's)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs in parallel (default: 2 for tiny-llama; 1 for the real model, whose runs "
                        "already train on two worker processes)")
    parser.add_argument("--set", nargs="*", default=[], dest="extra", help="extra Hydra overrides for every run")
    parser.add_argument("--cache-dir", default=os.environ.get("EDGEFLEET_CACHE", "/tmp/edgefleet-bench-cache"))
    parser.add_argument("--runs-dir", default=None, help="per-run JSON records (default: "
                        "/tmp/fedspine-runs/<model>-<scale>[-<hash of --set>]); runs already there with the same settings are kept")
    parser.add_argument("--report-only", action="store_true", help="no runs: summarise the records in --runs-dir")
    parser.add_argument("--docs-dir", default=None, help="write fedspine.{md,json} and plots here "
                        "(default docs/benchmarks/)")
    args = parser.parse_args(argv)
    profile = PROFILES[args.model][args.scale]
    args.rounds = args.rounds or profile["rounds"]
    args.cost = args.cost or profile["cost"]
    args.smooth = args.smooth or profile["smooth"]
    args.levels = [args.sparsity] if (args.sparsity and profile["rule"] == "v1") else profile["levels"]
    args.jobs = args.jobs or (2 if args.model == "tiny-llama" else 1)
    if args.rounds < 1 or any(not 0 < lv < 1 for lv in args.levels):
        parser.error("--rounds must be >= 1 and --sparsity in (0, 1)")
    return args


def scale_of(args) -> dict:
    """The run's scale, read back from its composed settings."""
    from runconfig.load import compose

    s = compose(overrides("fedspine", 0, args.rounds, "/tmp/unused-cache", "sqlite:////tmp/unused.db",
                          tuple(args.extra), args.cost[0], args.model, args.scale))
    return {"devices": s.fleet.size, "rounds": s.rounds, "cohort": s.federation.cohort_size,
            "local_steps": s.client.local_steps, "batch_size": s.client.batch_size, "seq_len": s.data.seq_len,
            "tokens_per_device_round": s.client.local_steps * s.client.batch_size * s.data.seq_len,
            "eval_windows": s.data.central_eval_windows, "precision": s.client.precision,
            "fedspine": {k: getattr(s.method.fedspine, k) for k in ("max_ratio", "target_sparsity", "prune_every",
                                                                     "sparsity_step")}}


def main(argv: list[str] | None = None) -> dict:
    from benchmarks import fedspine_report as report

    args = parse(argv)
    args.scale_settings = scale_of(args)  # the report reads it (it does not import this runner)
    if args.docs_dir:
        report.DOCS = Path(args.docs_dir)
    profile = PROFILES[args.model][args.scale]
    tag = f"{args.model}-{args.scale}"
    if args.extra:  # runs with other overrides keep their own records
        import hashlib

        tag += "-" + hashlib.sha1(" ".join(args.extra).encode()).hexdigest()[:8]
    runs_dir = Path(args.runs_dir or f"/tmp/fedspine-runs/{tag}")
    runs_dir.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix="fedspine-bench-")
    seeds = args.seeds
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    tasks = [{"model": args.model, "scale": args.scale, "cost": cost, "seed": seed, "method": method,
              "rounds": args.rounds, "levels": list(args.levels), "masks": profile["masks"],
              "extra": list(args.extra), "cache": args.cache_dir, "work": work, "threads": threads,
              "with_models": seed == seeds[0], "path": str(run_file(runs_dir, cost, seed, method))}
             for cost in args.cost for seed in seeds for method in args.methods]  # seed-major: whole seeds first
    t0 = time.perf_counter()
    if not args.report_only:
        done = load_runs(tasks)
        pending = [t for t in tasks if (t["cost"], t["seed"], t["method"]) not in done]
        print(f"{len(tasks) - len(pending)} of {len(tasks)} runs already in {runs_dir}; running {len(pending)}",
              flush=True)
        run_all(pending, args.jobs)
    results = load_runs(tasks)
    out = report.assemble(args, profile, results, seeds, None if args.report_only else time.perf_counter() - t0,
                          " ".join(overrides("fedspine", 0, args.rounds, "<cache>", "<uri>", tuple(args.extra),
                                             "<cost>", args.model, args.scale)[1:]))
    report.write_docs(out)
    return out


def run_all(tasks: list[dict], jobs: int) -> None:
    """Every task, in order; a failing run is reported and the others go on (its record is simply missing)."""
    if jobs <= 1:
        for t in tasks:
            try:
                run_task(t)
            except Exception as err:  # noqa: BLE001 - keep the other runs; the summary says what is missing
                print(f"run {t['cost']} seed {t['seed']} {t['method']} failed: {type(err).__name__}: {err}",
                      flush=True)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [(t, pool.submit(run_task, t)) for t in tasks]
        for t, f in futures:
            try:
                f.result()
            except Exception as err:  # noqa: BLE001
                print(f"run {t['cost']} seed {t['seed']} {t['method']} failed: {type(err).__name__}: {err}",
                      flush=True)


if __name__ == "__main__":
    main()
