"""One federated run as an object: ``FederatedRun(settings)`` with ``setup``, ``run(grid)`` and ``cleanup``.

Like a torchtune recipe: everything a run needs is built in one place (data and base model, the strategy with
user-level DP when ``privacy.mode=user``, the resume state, MLflow, the checkpointer, the central evaluator),
so the ServerApp (server/federation.py:run_server), ``simulations.compare`` (through ``simulations.run``) and
every benchmark run the same wiring; a benchmark adds observers (strategies/events.py) or replaces
``evaluate_fn`` after ``setup``, and never rebuilds the server by hand. Checkpointing follows
``checkpoint.enabled`` and DP follows ``privacy.mode``: a caller that wants neither says so in the settings.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from models.base_checkpoint import load_base_model
from models.lora import adapter_arrays, attach_lora, load_adapter_arrays
from privacy.plan import resolve_plan
from protocol.messages import from_array_record, to_array_record
from runconfig.choices import PrivacyMode
from runconfig.plain import to_plain
from runconfig.schema import Settings
from server import checkpoint as ckpt
from server.central_evaluation import CentralEvaluator
from server.preflight import device_windows, prepare
from server.progress import RoundProgress
from server.run_summary import log_generations, no_update_message, summarize
from server.strategy import build_strategy
from strategies.events import RunObserver
from strategies.fleet_fedavg import FleetFedAvg
from tracking.mlflow_tracker import MlflowTracker, scratch_dir


class NoUpdateAggregated(RuntimeError):
    """A run that ended without aggregating a single update: the model never moved, so it did not succeed."""


class History(RunObserver):
    """Every round's metrics, kept for the run's summary."""

    def __init__(self) -> None:
        self.rounds: dict[int, dict[str, float]] = {}

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        self.rounds[server_round] = dict(metrics)


class Tracking(RunObserver):
    """The run's events into its MLflow run."""

    def __init__(self, tracker: MlflowTracker) -> None:
        self.tracker = tracker

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        self.tracker.on_round(server_round, metrics)

    def on_artifact(self, data: dict, name: str) -> None:
        self.tracker.log_dict(data, name)


def simulation_concurrency(settings: Settings) -> int:
    """How many virtual clients Ray runs at once on this machine."""
    cpus = os.cpu_count() or 1
    return max(1, min(settings.federation.cohort_size, int(cpus // max(settings.simulation.num_cpus_per_client, 1e-9))))


class FederatedRun:
    """``setup()`` builds, ``run(grid)`` runs the rounds, ``cleanup()`` reports; ``execute(grid)`` does all three.

    After ``setup``: ``strategy``, ``history`` (every round's metrics), ``prepared`` (fleet, corpus, base),
    ``model`` (the server's PEFT model), ``evaluator`` (central evaluation) and ``evaluate_fn`` (what the rounds
    call; the evaluator unless replaced)."""

    def __init__(self, settings: Settings, *, observers: Iterable[RunObserver] = (), show_progress: bool = True,
                 source: tuple[str, str] | None = None) -> None:
        self.settings = settings
        self.extra_observers = list(observers)
        self.show_progress = show_progress
        self.source = source  # (program, full command) MLflow records as the run's source (default: this process's)
        self.strategy: FleetFedAvg | None = None
        self.result: Result | None = None
        self.summary: dict = {}

    # ------------------------------------------------------------------ setup
    def setup(self) -> FederatedRun:
        s = self.settings
        self._start = time.perf_counter()
        if s.privacy.mode == PrivacyMode.user:
            resolve_plan(s)  # sigma's calibration: an unreachable epsilon is refused before data and model work
        self.prepared = prepare(s, show_progress=self.show_progress)
        self.model = attach_lora(load_base_model(self.prepared.base_folder), s.method.lora, s.seed)
        self.initial: ArrayRecord = to_array_record(adapter_arrays(self.model))
        resume_path = ckpt.resolve_resume(s)
        resumed = ckpt.load(resume_path) if resume_path else None
        if resumed is not None:
            ckpt.check_compatible(resumed.settings, to_plain(s))
            self.initial = to_array_record(resumed.arrays)
        self.tracker = MlflowTracker(s, run_id=resumed.mlflow_run_id if resumed else None, source=self.source)
        self.history, self.progress = History(), RoundProgress(s.rounds, enabled=self.show_progress)
        self.strategy = build_strategy(s, self.prepared.devices, self.prepared.shape, simulation_concurrency(s),
                                       [self.history, Tracking(self.tracker), self.progress, *self.extra_observers])
        self.strategy.known_examples = device_windows(s, self.prepared.corpus, len(self.prepared.devices))
        self.evaluator = CentralEvaluator(self.model, self.prepared.corpus, s.data.seq_len, s.data.central_eval_windows)
        self.evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = self.evaluator
        self.first_round = self._resume(resumed) if resumed is not None else 1
        if s.checkpoint.enabled:
            path = resume_path or ckpt.checkpoint_path(s)
            self.strategy.round_end_hooks.append(ckpt.RoundCheckpointer(
                path, self.strategy, self.tracker.run_id, resumed.settings if resumed else to_plain(s),
                resumed.history if resumed else None))
            self.tracker.set_tag(ckpt.RUN_TAG, str(path))
        return self

    def _resume(self, resumed: ckpt.Checkpoint) -> int:
        """Put a checkpoint's state back (strategy, RNGs, history); returns the first round still to run."""
        self.strategy.set_state(resumed.strategy_state)
        ckpt.restore_rng(resumed.rng_state)
        last = resumed.server_round
        self.history.rounds.update({r: dict(m) for r, m in resumed.history.items()})
        # the checkpoint is written before MLflow logs a round: a crash in between leaves that round to log
        if last in resumed.history and not self.tracker.has_step("timing/round_wall_s", last):
            self.tracker.on_round(last, resumed.history[last])
        self.progress.bar.update(last)
        self.tracker.set_tag("edgefleet.resumed_after_round", str(last))
        return last + 1

    # -------------------------------------------------------------------- run
    def run(self, grid: Grid) -> Result:
        s = self.settings
        try:
            self.result = self.strategy.start(grid, self.initial, num_rounds=s.rounds,
                                              timeout=s.federation.round_timeout_s, evaluate_fn=self.evaluate_fn,
                                              first_round=self.first_round)
        except BaseException:
            self.tracker.finish("FAILED")
            raise
        finally:
            self.progress.close()
        return self.result

    # ---------------------------------------------------------------- cleanup
    def cleanup(self) -> dict:
        """The final adapter into the server's model, generations, summary.json, faults.json, the MLflow run's
        status. Raises :class:`NoUpdateAggregated` when no round aggregated an update."""
        s, strategy, tracker = self.settings, self.strategy, self.tracker
        load_adapter_arrays(self.model, from_array_record(self.result.arrays))
        if s.tracking.generations > 0:
            log_generations(self.model, self.prepared.corpus, s, tracker)
        summary = summarize(self.history.rounds, s, time.perf_counter() - self._start, tracker.run_id)
        summary["updates_aggregated"] = strategy.counters.model_version  # global adapters made from updates
        if s.tracking.log_adapter:
            adapter_dir = scratch_dir() / "adapter"
            self.model.save_pretrained(str(adapter_dir))
            tracker.log_adapter(adapter_dir)
        tracker.log_dict(summary, "summary.json")
        if strategy.fault_log:
            tracker.log_dict({"events": strategy.fault_log}, "faults.json")
        failed = strategy.counters.model_version == 0 and s.rounds > 0
        tracker.finish("FAILED" if failed else "FINISHED")
        out = Path(s.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        if self.show_progress:
            print(f"summary: {(out / 'summary.json').absolute()}\n{tracker.ui_hint()}", flush=True)
        self.summary = summary
        if failed:
            raise NoUpdateAggregated(no_update_message(strategy.fault_log, s.rounds))
        return summary

    def execute(self, grid: Grid) -> Result:
        """setup, run, cleanup."""
        self.setup()
        self.run(grid)
        self.cleanup()
        return self.result
