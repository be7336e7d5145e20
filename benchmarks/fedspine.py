"""FedSpine vs baselines on +fleet=80dev: simulated time to a target perplexity, quality at equal sparsity.

``python -m benchmarks.fedspine [--seeds 0 1 2] [--rounds 12] [--cost smollm2-135m llama-3.2-1b] [--jobs 2]`` runs
every method of the FedSpine harness and FedAvg-LoRA through the real strategies and ClientApp handlers
(``simulations.inprocess``, one process per seed and priced model; the machine is too small for a Ray fleet of
80), then writes docs/benchmarks/fedspine.{md,json} and two plots per priced model. Learning runs on the proxy;
time, bytes and memory are priced for each ``--cost`` model (conf/cost/, fleet/pricing.py).

* Quality at equal sparsity, every round: the global adapter merged into the base pruned one-shot to
  ``--sparsity`` (same LoRAPrune importance on the same public calibration windows for every method) and
  scored on the held-out plays: the model a deployment at that sparsity gets. The dense quality (global
  adapter on the unpruned base) is logged and reported too.
* Time to target: the first round whose running mean (``--smooth`` rounds) of that perplexity is <= the
  seed's target, in simulated seconds (the analytic clock: the priced model's FLOPs and bytes on each device).
  Second column: time to reach the best baseline's own final quality at that sparsity. Each seed pretrains its own base, so each seed has its own target: half-way from its base
  to the median of the methods' final perplexities; ``target_ppl`` is their mean. Per method the mean over
  seeds (None if a seed never reaches it).
* Devices differ within a class (``fleet.link_spread``, ``fleet.compute_spread``): a class label does not
  tell a device's speed, which is the situation FedSpine's bandit is for (no prior knowledge of a device).
* Per device class: the final pruned model of a FedSpine device of the class (its own structure and rank,
  global adapter merged) -- measured host latency of a batch-1 forward and its weight memory vs dense.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.fedspine_report import plots, write_docs
from benchmarks.fedspine_stats import summarise_priced

METHODS = ["fedavg_lora", "hetlora", "fedspine_fixed", "fedspine_random", "fedspine"]


def overrides(method: str, seed: int, rounds: int, cache: str, uri: str, extra: tuple[str, ...] = (),
              cost: str = "smollm2-135m") -> list[str]:
    common = [
        "+fleet=80dev", "model=tiny-llama",  # the proxy this benchmark pretrains (model.pretrain.* below)
        f"method={method}", f"seed={seed}", f"rounds={rounds}", f"cache_dir={cache}", f"cost={cost}",
        f"tracking.uri={uri}", "tracking.log_adapter=false", "tracking.experiment=fedspine-bench",
        "tracking.generations=0", f"output_dir=fedspine-{cost}-seed{seed}-{method}",  # relative to the work dir
        "federation.cohort_size=40", "federation.eval_cohort_size=0",
        "fleet.link_spread=0.5", "fleet.compute_spread=0.3",
        "client.local_steps=4", "client.batch_size=4", "client.lr=3e-3", "data.seq_len=32",
        "data.central_eval_windows=96", "model.pretrain.steps=150", "model.pretrain.warmup_steps=15",
    ]
    if method != "fedavg_lora":  # pruning step every 2 of the 4 local iterations (the paper's 20 scaled down)
        common += ["method.fedspine.prune_every=2", "method.fedspine.sparsity_step=0.25"]
    return common + [e for e in extra if method != "fedavg_lora" or not e.startswith("method.")]


class SparseAndDenseEvaluator:
    """Each round: the global adapter on the dense base (``eval/global_*``) and served as deployed at the
    benchmark's sparsity (``eval/sparse_*``: base pruned one-shot by the same LoRAPrune importance on the same
    public calibration windows for every method, adapter merged; :func:`pruning.serve.serve`)."""

    def __init__(self, dense, settings, prepared, sparsity: float) -> None:
        from models.base_checkpoint import load_base_model
        from textdata.corpus import windows

        self.dense, self.settings, self.sparsity = dense, settings, sparsity
        corpus = prepared.corpus
        self.base = load_base_model(prepared.base_folder)
        cx, cy = windows(corpus.public_ids, settings.data.seq_len, corpus.tokenizer.pad_token_id)
        idx = torch.linspace(0, len(cx) - 1, 32).round().long()
        self.calib = cx[idx], cy[idx]
        self.inputs, self.labels = dense.inputs, dense.labels  # the same held-out windows as the dense score

    def sparse_score(self, adapter: dict):
        from models.evaluation import evaluate_lm
        from pruning.serve import serve

        lora = self.settings.method.lora
        model, _ = serve(self.base, adapter, lora, lora.rank, rank=lora.rank, sparsity=self.sparsity,
                         calib_inputs=self.calib[0], calib_labels=self.calib[1])
        return evaluate_lm(model, self.inputs, self.labels)

    def __call__(self, server_round: int, arrays):
        from flwr.app import MetricRecord

        from protocol.messages import from_array_record

        metrics = dict(self.dense(server_round, arrays))
        score = self.sparse_score(from_array_record(arrays))
        metrics.update({"eval/sparse_ppl": score.perplexity, "eval/sparse_accuracy": score.accuracy})
        return MetricRecord(metrics)


def run_one(method: str, seed: int, rounds: int, cache: str, uri: str, extra: tuple[str, ...] = (),
            sparsity: float = 0.5, cost: str = "smollm2-135m") -> dict:
    """One federated run in-process (server.run.FederatedRun: the ServerApp's wiring, checkpoints and MLflow
    included); returns its per-round history (dense and sparse quality) and final state."""
    from protocol.messages import from_array_record
    from runconfig.load import compose
    from runconfig.plain import to_plain
    from server.run import FederatedRun
    from simulations.inprocess import InProcessGrid

    settings = compose(overrides(method, seed, rounds, cache, uri, extra, cost))
    run = FederatedRun(settings, show_progress=False).setup()
    run.evaluate_fn = SparseAndDenseEvaluator(run.evaluator, settings, run.prepared, sparsity)
    start = time.perf_counter()
    result = run.run(InProcessGrid(to_plain(settings), settings.fleet.size))
    wall = time.perf_counter() - start
    strategy = run.strategy
    run.tracker.log_dict(strategy.get_state(), "fedspine/state.json")
    run.cleanup()
    rows = [run.history.rounds[r] for r in sorted(run.history.rounds)]
    return {
        "settings": settings, "prepared": run.prepared, "strategy": strategy, "wall_s": wall,
        "adapter": from_array_record(result.arrays),
        "ppl": [r["eval/global_ppl"] for r in rows], "accuracy": [r["eval/global_accuracy"] for r in rows],
        "sparse_ppl": [r["eval/sparse_ppl"] for r in rows],
        "sparse_accuracy": [r["eval/sparse_accuracy"] for r in rows],
        "sim_time": [0.0] + [r.get("clock/sim_time_s", np.nan) for r in rows[1:]],
        "bytes_up": float(sum(r.get("cost/bytes_up", 0.0) for r in rows)),  # at the priced model's shapes
        "skipped_memory": float(sum(r.get("fleet/skipped_memory", 0.0) for r in rows)),
        "round_compute": [r.get("clock/round_compute_s", 0.0) for r in rows[1:]],
        "round_transfer": [r.get("clock/round_transfer_s", 0.0) for r in rows[1:]],
        "priced_as": strategy.pricer.label,
    }


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


def run_seed(seed: int, methods: list[str], rounds: int, cache: str, work: str, extra: tuple[str, ...],
             sparsity: float, with_models: bool, cost: str) -> dict[str, dict]:
    """Every method for one seed (a worker process); plain results only."""
    torch.set_num_threads(1)
    from simulations.launch import quiet_frameworks
    from strategies.fedspine import FedSpine

    quiet_frameworks()
    os.chdir(work)  # anything a run writes to "." stays out of the repository
    uri = f"sqlite:///{Path(work) / f'mlflow-{cost}-seed{seed}.db'}"
    out = {}
    for method in methods:
        run = run_one(method, seed, rounds, cache, uri, extra, sparsity, cost)
        strategy = run["strategy"]
        fedspine_like = isinstance(strategy, FedSpine)
        out[method] = {
            **{k: run[k] for k in ("ppl", "accuracy", "sparse_ppl", "sparse_accuracy", "sim_time", "bytes_up",
                                   "skipped_memory", "wall_s", "round_compute", "round_transfer", "priced_as")},
            "fleet_sparsity": strategy.state_metrics()["fedspine/fleet_mean_sparsity"] if fedspine_like else 0.0,
            "arm_log": list(strategy.arm_log) if fedspine_like else [],
            "per_class": per_class_models(run) if (with_models and method == "fedspine") else {},
        }
        print(f"[{cost}] seed {seed} {method:16s} final ppl {run['ppl'][-1]:8.2f}  at {sparsity:.0%} sparsity "
              f"{run['sparse_ppl'][-1]:8.2f}  sim {run['sim_time'][-1]:7.2f}s  wall {run['wall_s']:6.1f}s",
              flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--cost", nargs="+", default=["smollm2-135m", "llama-3.2-1b"],
                        help="priced models (conf/cost/); learning runs on the proxy either way")
    parser.add_argument("--sparsity", type=float, default=0.5, help="the equal sparsity every method is served at")
    parser.add_argument("--smooth", type=int, default=3, help="rounds in the running mean used for time to target")
    parser.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                        help="seeds run in parallel (the analytic clock does not depend on host load)")
    parser.add_argument("--set", nargs="*", default=[], dest="extra", help="extra Hydra overrides for every run")
    parser.add_argument("--cache-dir", default=os.environ.get("EDGEFLEET_CACHE", "/tmp/edgefleet-bench-cache"))
    parser.add_argument("--docs-dir", default=None, help="write fedspine.{md,json} and plots here "
                        "(default docs/benchmarks/)")
    args = parser.parse_args(argv)
    if args.docs_dir:
        import benchmarks.fedspine_report as report

        report.DOCS = Path(args.docs_dir)
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    work = tempfile.mkdtemp(prefix="fedspine-bench-")
    extra = tuple(args.extra)
    t0 = time.perf_counter()
    seeds = args.seeds
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {(cost, seed): pool.submit(run_seed, seed, args.methods, args.rounds, args.cache_dir, work, extra,
                                             args.sparsity, seed == seeds[0], cost)
                   for cost in args.cost for seed in seeds}
        results = {key: f.result() for key, f in futures.items()}
    by_priced = {}
    for i, cost in enumerate(args.cost):
        summary = summarise_priced({seed: results[(cost, seed)] for seed in seeds}, seeds, args.methods, args)
        arm_rows = summary.pop("_arm_rows")
        per_seed = {seed: results[(cost, seed)] for seed in seeds}
        summary["plots"] = plots(per_seed, seeds, summary["target_ppl"], arm_rows, args.sparsity,
                                 summary["priced_as"], "" if i == 0 else f"_{cost}")
        by_priced[summary["priced_as"]] = summary
    first = next(iter(by_priced.values()))
    out = {
        **first,  # the first priced model's results under the keys this benchmark always had
        "quality": f"global adapter served at {args.sparsity:.0%} sparsity (one-shot, same rule for every method)",
        "seeds": seeds,
        "rounds": args.rounds,
        "equal_sparsity": args.sparsity,
        "smooth_rounds": args.smooth,
        "by_priced_model": by_priced,
        "settings": " ".join(overrides("fedspine", 0, args.rounds, "<cache>", "<uri>", extra, "<cost>")[1:]),
        "benchmark_wall_s": time.perf_counter() - t0,
    }
    write_docs(out)
    return out



if __name__ == "__main__":
    main()
