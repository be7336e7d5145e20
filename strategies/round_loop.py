"""The round loop: Flower's ``Strategy.start`` (flwr/serverapp/strategy/strategy.py), plus what a fleet needs.

Why ours and not ``Strategy.start``: Flower's loop has no device discovery (node ids are random in a
simulation; we ask each node which device it is), no retry of a round with too few replies, no resume from
round k (``first_round``), and no per-round hook (the checkpoint, MLflow). Everything else is Flower's order:
central evaluation of the initial arrays, then per round configure_train -> send_and_receive ->
aggregate_train -> configure_evaluate -> send_and_receive -> aggregate_evaluate -> central evaluation. Each
phase is timed and emitted as an event (strategies/events.py); the strategy implements only configure/aggregate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from protocol.messages import from_array_record
from runconfig.schema import Settings
from strategies.events import Events
from strategies.round_state import FaultLog, RunCounters

logger = logging.getLogger(__name__)

# per-attempt counts that add up over a retried round's attempts
SUMMED = ("fleet/", "comm/", "cost/", "clock/sim_round_s")


class FleetStrategy(Protocol):
    """What the loop needs of a strategy (strategies/fleet_fedavg.py:FleetFedAvg): Flower's configure/aggregate
    pairs, plus discovery, the run's counters, fault log, events and end-of-round hooks."""

    settings: Settings
    events: Events
    counters: RunCounters
    faults: FaultLog
    attempt: int
    concurrency: int
    round_end_hooks: list[Callable[[int, dict[str, np.ndarray], dict[str, float]], None]]

    def discover(self, grid: Grid, timeout: float) -> None: ...

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]: ...

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]: ...

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]: ...

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None: ...


class PhaseTimer:
    """Wall time of each phase of one round (summed over attempts), each also emitted as an event."""

    def __init__(self, strategy: FleetStrategy, server_round: int) -> None:
        self.strategy, self.server_round, self.seconds = strategy, server_round, {}

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + took
            self.strategy.events.on_phase(self.server_round, name, took)

    def total(self, *names: str) -> float:
        return sum(self.seconds.get(n, 0.0) for n in names)


def aggregate_or_fail(strategy: FleetStrategy, server_round: int, replies) -> tuple[ArrayRecord | None, dict]:
    """``aggregate_train``; an exception there fails this attempt (logged, counted, the global adapter stays)
    instead of the run: whatever the replies held, the next round still runs."""
    counters = strategy.counters
    version, history = counters.model_version, list(counters.norm_history)
    try:
        arrays, metrics = strategy.aggregate_train(server_round, replies)
        return arrays, dict(metrics or {})
    except Exception as err:  # noqa: BLE001 - one bad round must not end a long run
        logger.exception("round %d: aggregation failed; the round is logged failed and the run goes on", server_round)
        counters.model_version, counters.norm_history = version, history
        strategy.faults.add(server_round, strategy.attempt, -1, "round_failed", type(err).__name__, str(err))
        return None, {"fleet/round_failed": 1}


def train_round(strategy: FleetStrategy, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                timeout: float, timer: PhaseTimer | None = None) -> tuple[ArrayRecord | None, dict[str, float]]:
    """One round's training; a short round is retried with a fresh cohort (``federation.on_short_round``) up to
    ``max_retries`` times, then skipped (the global adapter stays). Counts add up over attempts."""
    timer = timer or PhaseTimer(strategy, server_round)
    fed = strategy.settings.federation
    retries = fed.max_retries if fed.on_short_round == "retry" else 0
    totals: dict[str, float] = {}
    new_arrays, metrics = None, {}
    for attempt in range(retries + 1):
        strategy.attempt = attempt
        with timer.phase("configure_train"):
            messages = list(strategy.configure_train(server_round, arrays, config, grid))
        with timer.phase("train"):
            replies = list(grid.send_and_receive(messages, timeout=timeout))
        strategy.events.on_train_replies(server_round, replies)
        with timer.phase("aggregate_train"):
            new_arrays, metrics = aggregate_or_fail(strategy, server_round, replies)
        for key, value in metrics.items():
            if key.startswith(SUMMED) and key != "fleet/replies":
                totals[key] = totals.get(key, 0) + value
        if new_arrays is not None:
            break
    strategy.attempt = 0
    metrics.update(totals)
    metrics["fleet/attempts"] = attempt + 1
    metrics["fleet/skipped_round"] = int(new_arrays is None)
    if new_arrays is None:
        logger.warning("round %d skipped after %d attempt(s): the global adapter stays", server_round, attempt + 1)
    return new_arrays, metrics


def round_end(strategy: FleetStrategy, server_round: int, arrays: ArrayRecord, metrics: dict[str, float]) -> None:
    """Hooks first (the checkpoint is on disk before MLflow shows the round), then observers."""
    adapter = from_array_record(arrays)
    for hook in strategy.round_end_hooks:
        hook(server_round, adapter, metrics)
    strategy.events.on_round(server_round, metrics)


def run_rounds(
    strategy: FleetStrategy,
    grid: Grid,
    initial_arrays: ArrayRecord,
    num_rounds: int,
    timeout: float,
    train_config: ConfigRecord | None = None,
    evaluate_config: ConfigRecord | None = None,
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    first_round: int = 1,
) -> Result:
    """The rounds ``first_round..num_rounds``. ``first_round`` > 1 resumes: ``initial_arrays`` and the
    strategy's state come from the checkpoint of round ``first_round - 1`` (the initial evaluation is not
    repeated)."""
    train_config = train_config or ConfigRecord()
    evaluate_config = evaluate_config or ConfigRecord()
    result = Result(arrays=initial_arrays)
    strategy.events.on_start(strategy)
    strategy.discover(grid, timeout)
    if evaluate_fn and first_round == 1:
        timer = PhaseTimer(strategy, 0)
        with timer.phase("central_evaluate"):
            initial = evaluate_fn(0, initial_arrays)
        if initial is not None:
            result.evaluate_metrics_serverapp[0] = initial
            round_end(strategy, 0, initial_arrays, dict(initial))
    arrays = initial_arrays
    for rnd in range(first_round, num_rounds + 1):
        timer = PhaseTimer(strategy, rnd)
        t0 = time.perf_counter()
        new_arrays, metrics = train_round(strategy, grid, rnd, arrays, train_config, timeout, timer)
        t1 = time.perf_counter()
        if new_arrays is not None:
            arrays = result.arrays = new_arrays
        result.train_metrics_clientapp[rnd] = MetricRecord(metrics)
        with timer.phase("configure_evaluate"):
            messages = list(strategy.configure_evaluate(rnd, arrays, evaluate_config, grid))
        with timer.phase("evaluate"):
            eval_replies = grid.send_and_receive(messages, timeout=timeout)
        with timer.phase("aggregate_evaluate"):
            fed_eval = strategy.aggregate_evaluate(rnd, eval_replies)
        t2 = time.perf_counter()
        if fed_eval is not None:
            result.evaluate_metrics_clientapp[rnd] = fed_eval
            metrics.update(fed_eval)
        if evaluate_fn:
            with timer.phase("central_evaluate"):
                central = evaluate_fn(rnd, arrays)
            if central is not None:
                result.evaluate_metrics_serverapp[rnd] = central
                metrics.update(central)
        t3 = time.perf_counter()
        client_s = metrics.get("timing/client_compute_s", 0.0) + metrics.get("timing/client_eval_s", 0.0)
        metrics.update({
            "timing/round_wall_s": t3 - t0,
            "timing/federated_wall_s": t2 - t0,
            "timing/train_wall_s": t1 - t0,
            "timing/central_eval_s": t3 - t2,
            # share of the federated phases' wall time not spent computing on clients (all workers busy = 0)
            "timing/overhead_share": max(0.0, 1.0 - client_s / (strategy.concurrency * max(t2 - t0, 1e-9))),
        })
        round_end(strategy, rnd, arrays, metrics)
    return result
