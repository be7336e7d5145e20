"""The server side of one run, as the ServerApp calls it: :class:`server.run.FederatedRun` from start to end."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from runconfig.schema import Settings
from server.run import FederatedRun, History, NoUpdateAggregated, simulation_concurrency
from strategies.events import RunObserver

__all__ = ["History", "NoUpdateAggregated", "run_server", "simulation_concurrency"]


def run_server(grid: Grid, settings: Settings, show_progress: bool = True,
               source: tuple[str, str] | None = None, observers: Iterable[RunObserver] = ()) -> Result:
    """One run, start to end. ``source``: (program, full command) MLflow records as the run's source (default:
    this process's); ``observers``: more receivers of the run's events (a benchmark's timers)."""
    return FederatedRun(settings, observers=observers, show_progress=show_progress, source=source).execute(grid)
