"""The server side of one run: prepare, build the strategy, run the rounds, track everything in MLflow."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from models.base_checkpoint import load_base_model
from models.generation import held_out_prompts, side_by_side, to_markdown
from models.lora import adapter_arrays, attach_lora, load_adapter_arrays
from protocol.messages import from_array_record, to_array_record
from runconfig.plain import to_plain
from runconfig.schema import Settings
from server import checkpoint as ckpt
from server.central_evaluation import CentralEvaluator
from server.preflight import device_windows, prepare
from server.progress import RoundProgress
from privacy.dp_fedavg import strategy_for
from tracking.mlflow_tracker import MlflowTracker, scratch_dir


class NoUpdateAggregated(RuntimeError):
    """A run that ended without aggregating a single update: the model never moved, so it did not succeed."""


def no_update_message(strategy, rounds: int) -> str:
    reasons = [f"device {e['device']} {e['outcome']}: {e['reason']} {e['detail']}".strip() for e in strategy.fault_log]
    first = f"; first problem: {reasons[0][:200]}" if reasons else ""
    return (f"no update was aggregated in {rounds} round(s) ({len(reasons)} device fault(s){first}). "
            "The global adapter is unchanged; see faults.json in the MLflow run")


class History:
    """Every round's metrics, kept for the run's summary."""

    def __init__(self) -> None:
        self.rounds: dict[int, dict[str, float]] = {}

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        self.rounds[server_round] = dict(metrics)


def simulation_concurrency(settings: Settings) -> int:
    """How many virtual clients Ray runs at once on this machine."""
    cpus = os.cpu_count() or 1
    return max(1, min(settings.federation.cohort_size, int(cpus // max(settings.simulation.num_cpus_per_client, 1e-9))))


def summarize(history: History, settings: Settings, wall_s: float, run_id: str) -> dict:
    rounds = sorted(r for r in history.rounds if r > 0)
    last = history.rounds[rounds[-1]] if rounds else {}
    base = history.rounds.get(0, {})
    overhead = [history.rounds[r]["timing/overhead_share"] for r in rounds]
    return {
        "mlflow_run_id": run_id,
        "method": settings.method.name,
        "model": settings.model.name,  # the model that is fine-tuned
        "fleet": settings.fleet.name,
        "fleet_size": settings.fleet.size,
        "rounds": len(rounds),
        "server_wall_s": wall_s,
        "sim_time_s": last.get("clock/sim_time_s", 0.0),
        "priced_as": settings.cost.priced_as,  # the model simulated time and bytes are charged for
        "clock": settings.cost.clock,
        "ppl_base": base.get("eval/global_ppl"),
        "ppl_final": last.get("eval/global_ppl"),
        "accuracy_base": base.get("eval/global_accuracy"),
        "accuracy_final": last.get("eval/global_accuracy"),
        "overhead_share": float(np.mean(overhead)) if overhead else None,
        "round_wall_s": float(np.mean([history.rounds[r]["timing/round_wall_s"] for r in rounds])) if rounds else None,
        "bytes_up": sum(history.rounds[r].get("comm/bytes_up", 0) for r in rounds),
        "bytes_down": sum(history.rounds[r].get("comm/bytes_down", 0) for r in rounds),
        "failures": sum(history.rounds[r].get("fleet/failures", 0) for r in rounds),
        "late": sum(history.rounds[r].get("fleet/late", 0) for r in rounds),
        "rejected": sum(history.rounds[r].get("fleet/rejected", 0) for r in rounds),
        "skipped_rounds": sum(history.rounds[r].get("fleet/skipped_round", 0) for r in rounds),
        "no_reply": sum(history.rounds[r].get("fleet/no_reply", 0) for r in rounds),
        "skipped_memory": sum(history.rounds[r].get("fleet/skipped_memory", 0) for r in rounds),
    }


def log_generations(peft_model, corpus, settings: Settings, tracker: MlflowTracker) -> None:
    """generations.md / .json: the base and the final model continuing fixed held-out-play prompts."""
    t = settings.tracking
    rows = side_by_side(peft_model, corpus.tokenizer, held_out_prompts(corpus, t.generations), t.generation_tokens)
    tracker.log_text(to_markdown(rows, settings.model.name, t.generation_tokens), "generations.md")
    tracker.log_dict({"model": settings.model.name, "max_new_tokens": t.generation_tokens, "decoding": "greedy",
                      "rows": rows}, "generations.json")


def resume_state(strategy, resumed: ckpt.Checkpoint, history: History, progress: RoundProgress,
                 tracker: MlflowTracker) -> int:
    """Put a checkpoint's state back (strategy, RNGs, history); returns the first round still to run."""
    strategy.set_state(resumed.strategy_state)
    ckpt.restore_rng(resumed.rng_state)
    last = resumed.server_round
    history.rounds.update({r: dict(m) for r, m in resumed.history.items()})
    # the checkpoint is written before MLflow logs a round: a crash in between leaves that round to log
    if last in resumed.history and not tracker.has_step("timing/round_wall_s", last):
        tracker.on_round(last, resumed.history[last])
    progress.bar.update(last)
    tracker.set_tag("edgefleet.resumed_after_round", str(last))
    return last + 1


def run_server(grid: Grid, settings: Settings, show_progress: bool = True,
               source: tuple[str, str] | None = None) -> Result:
    """One run, start to end. ``source``: (program, full command) MLflow records as the run's source (default:
    this process's)."""
    start = time.perf_counter()
    prepared = prepare(settings, show_progress=show_progress)
    peft_model = attach_lora(load_base_model(prepared.base_folder), settings.method.lora, settings.seed)
    initial = to_array_record(adapter_arrays(peft_model))
    resume_path = ckpt.resolve_resume(settings)
    resumed = ckpt.load(resume_path) if resume_path else None
    if resumed is not None:
        ckpt.check_compatible(resumed.settings, to_plain(settings))
        initial = to_array_record(resumed.arrays)
    tracker = MlflowTracker(settings, run_id=resumed.mlflow_run_id if resumed else None, source=source)
    history, progress = History(), RoundProgress(settings.rounds, enabled=show_progress)
    strategy = strategy_for(settings)(  # the method's strategy, with user-level DP when privacy.mode=user
        settings,
        prepared.devices,
        prepared.shape,
        concurrency=simulation_concurrency(settings),
        observers=[history, tracker, progress],
    )
    strategy.known_examples = device_windows(settings, prepared.corpus, len(prepared.devices))
    evaluator = CentralEvaluator(peft_model, prepared.corpus, settings.data.seq_len, settings.data.central_eval_windows)
    first_round = 1
    if resumed is not None:
        first_round = resume_state(strategy, resumed, history, progress, tracker)
    if settings.checkpoint.enabled:
        path = resume_path or ckpt.checkpoint_path(settings)
        strategy.round_end_hooks.append(ckpt.RoundCheckpointer(
            path, strategy, tracker.run_id, resumed.settings if resumed else to_plain(settings),
            resumed.history if resumed else None))
        tracker.set_tag(ckpt.RUN_TAG, str(path))
    try:
        result = strategy.start(
            grid,
            initial,
            num_rounds=settings.rounds,
            timeout=settings.federation.round_timeout_s,
            evaluate_fn=evaluator,
            **({"first_round": first_round} if first_round > 1 else {}),  # strategies overriding start() may lack it
        )
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        progress.close()
    load_adapter_arrays(peft_model, from_array_record(result.arrays))
    if settings.tracking.generations > 0:
        log_generations(peft_model, prepared.corpus, settings, tracker)
    summary = summarize(history, settings, time.perf_counter() - start, tracker.run_id)
    summary["updates_aggregated"] = strategy.model_version  # global adapters made from at least one update
    if settings.tracking.log_adapter:
        adapter_dir = scratch_dir() / "adapter"
        peft_model.save_pretrained(str(adapter_dir))
        tracker.log_adapter(adapter_dir)
    tracker.log_dict(summary, "summary.json")
    if strategy.fault_log:
        tracker.log_dict({"events": strategy.fault_log}, "faults.json")
    failed = strategy.model_version == 0 and settings.rounds > 0
    tracker.finish("FAILED" if failed else "FINISHED")
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if show_progress:
        print(f"summary: {(out / 'summary.json').absolute()}\n{tracker.ui_hint()}", flush=True)
    if failed:
        raise NoUpdateAggregated(no_update_message(strategy, settings.rounds))
    return result
