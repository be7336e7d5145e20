"""The one place that starts Flower's simulation engine.

``flwr.simulation.run_simulation`` is deprecated in Flower 1.42 in favour of ``flwr run`` (which this project
also supports, see docs/deploy.md); it is kept here, behind one function, because it lets the Hydra entry point
hand the apps a fully composed config in-process and show one clean progress bar.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

from runconfig.plain import to_plain
from runconfig.schema import Settings

if TYPE_CHECKING:  # (strategies imports the ML frameworks, which quiet_frameworks must precede)
    from strategies.events import RunObserver


def quiet_frameworks() -> None:
    """Keep Ray's and Flower's INFO chatter off the console (errors still show)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("ray", "mlflow", "alembic", "httpx", "urllib3", "transformers", "peft"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.ERROR)  # its deprecation notice for run_simulation included
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def backend_config(settings: Settings) -> dict:
    sim = settings.simulation
    init_args: dict = {
        "logging_level": logging.ERROR,
        "log_to_driver": False,
        "include_dashboard": False,
    }
    if sim.ray_address:
        init_args = {"address": sim.ray_address, "logging_level": logging.ERROR, "log_to_driver": False}
    return {
        "client_resources": {"num_cpus": sim.num_cpus_per_client, "num_gpus": sim.num_gpus_per_client},
        "init_args": init_args,
    }


def launch_simulation(settings: Settings, show_progress: bool = True, observers: Iterable[RunObserver] = ()) -> None:
    """Run the ServerApp and one ClientApp per device of the fleet on Flower's simulation engine; ``observers``
    receive the run's events (strategies/events.py: phase timings, rounds)."""
    quiet_frameworks()
    from flwr.simulation import run_simulation

    from client.app import build_client_app
    from server.app import build_server_app

    plain = to_plain(settings)
    quiet_frameworks()  # importing flwr resets its logger
    if settings.simulation.reuse_freed_memory:  # the server's process; client processes: client.runtime
        from simulations.host_allocator import reuse_freed_memory

        reuse_freed_memory()
    if settings.simulation.backend == "inprocess":  # one process, no Ray: see simulations/inprocess.py
        from server.federation import run_server
        from simulations.inprocess import InProcessGrid

        with InProcessGrid(plain, settings.fleet.size) as grid:
            run_server(grid, settings, show_progress=show_progress, observers=observers)
        return
    run_simulation(
        server_app=build_server_app(plain, show_progress=show_progress, observers=observers),
        client_app=build_client_app(plain),
        num_supernodes=settings.fleet.size,
        backend_name=settings.simulation.backend,
        backend_config=backend_config(settings),
    )
