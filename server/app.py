"""The ServerApp (Flower Message API). ``build_server_app`` binds it to one run's settings; the module-level
``app`` is the ``flwr run .`` entry point, reading Hydra overrides from the run config.

Under ``flwr run`` the ServerApp's working directory is the SuperLink's, so each run writes its summary and
checkpoint to its own git-ignored folder there, ``outputs/flwr/<Flower run id>/``, unless ``output_dir=`` says
otherwise."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from runconfig.load import compose
from runconfig.plain import from_plain
from server.federation import run_server
from strategies.events import RunObserver


def build_server_app(plain_settings: dict, show_progress: bool = True, observers: Iterable[RunObserver] = ()
                     ) -> ServerApp:
    """``observers`` receive the run's events (they run in this process: the simulation's ServerApp does)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, from_plain(plain_settings), show_progress=show_progress, observers=observers)

    return app


app = ServerApp()


FLWR_OUTPUT_DIR = "outputs/flwr"


def flwr_run_overrides(run_config_overrides: str, run_id: int) -> list[str]:
    """The run config's Hydra overrides, plus this run's own output folder unless they name one."""
    overrides = run_config_overrides.split()
    if not any(o.lstrip("+").startswith("output_dir=") for o in overrides):
        overrides.append(f"output_dir={FLWR_OUTPUT_DIR}/{run_id}")
    return overrides


@app.main()
def _main(grid: Grid, context: Context) -> None:
    given = str(context.run_config.get("overrides", ""))
    command = f"flwr run . --run-config 'overrides=\"{given}\"' (Flower run {context.run_id})"
    source = ("flwr run (server.app:app)", command)
    run_server(grid, compose(flwr_run_overrides(given, context.run_id)), source=source)
