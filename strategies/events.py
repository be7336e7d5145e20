"""What a run tells the outside while it runs: one small observer interface.

The round loop (strategies/round_loop.py) and the strategy emit three kinds of event; every observer (MLflow,
the progress bar, the run's history, a benchmark's timer) subclasses :class:`RunObserver` and overrides the
ones it wants. Phase timings come from here (``on_phase``), never from wrapping the strategy's methods.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message

# the loop's phases, in order within a round (``configure_train`` .. ``aggregate_train`` once per attempt)
PHASES = ("configure_train", "train", "aggregate_train", "configure_evaluate", "evaluate", "aggregate_evaluate",
          "central_evaluate")


class RunObserver:
    """Base class of every observer: each event is a no-op unless overridden."""

    def on_start(self, strategy) -> None:
        """The rounds are about to start (``strategy``: the run's FleetFedAvg, for observers that read its
        ledger, e.g. the work each reply was sent)."""

    def on_phase(self, server_round: int, phase: str, seconds: float) -> None:
        """One phase of a round ended after ``seconds`` of wall time (a retried round emits its train phases
        once per attempt)."""

    def on_train_replies(self, server_round: int, replies: list[Message]) -> None:
        """A training attempt's raw replies, before validation (the throughput benchmark reads their metrics)."""

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        """A round ended (0: the evaluation before training); ``metrics`` are what MLflow logs."""

    def on_artifact(self, data: dict, name: str) -> None:
        """A JSON artifact of the run (the privacy accountant, FedSpine's bandit tables)."""


class Events(RunObserver):
    """Fans every event out to a list of observers, in order."""

    def __init__(self, observers: Iterable[RunObserver] = ()) -> None:
        self.observers: list[RunObserver] = list(observers)

    def append(self, observer: RunObserver) -> None:
        self.observers.append(observer)

    def on_start(self, strategy) -> None:
        for o in self.observers:
            o.on_start(strategy)

    def on_phase(self, server_round: int, phase: str, seconds: float) -> None:
        for o in self.observers:
            o.on_phase(server_round, phase, seconds)

    def on_train_replies(self, server_round: int, replies: list[Message]) -> None:
        for o in self.observers:
            o.on_train_replies(server_round, replies)

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        for o in self.observers:
            o.on_round(server_round, metrics)

    def on_artifact(self, data: dict, name: str) -> None:
        for o in self.observers:
            o.on_artifact(data, name)


class OnRound(RunObserver):
    """An observer from a function of (round, metrics): the run's history in tests and benchmarks."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        self.fn(server_round, metrics)
