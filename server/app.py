"""The ServerApp (Flower Message API). ``build_server_app`` binds it to one run's settings; the module-level
``app`` is the ``flwr run .`` entry point, reading Hydra overrides from the run config."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from runconfig.load import compose, from_plain
from server.federation import run_server


def build_server_app(plain_settings: dict, show_progress: bool = True) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, from_plain(plain_settings), show_progress=show_progress)

    return app


app = ServerApp()


@app.main()
def _main(grid: Grid, context: Context) -> None:
    run_server(grid, compose(str(context.run_config.get("overrides", "")).split()))
