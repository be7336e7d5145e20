"""Hydra entry point: ``python -m simulations.run +fleet=80dev [overrides]`` (``-m`` for sweeps).

Validates the composed config, prepares data and the base model in this process (with progress bars, before
Ray starts), then launches Flower once. Bad input ends with one clear message and exit code 2.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from runconfig.load import ConfigError, to_plain, to_settings
from server.checkpoint import CheckpointError, check_compatible, load, resolve_resume
from textdata.shakespeare import DatasetPackageMissing


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_resume(settings) -> None:
    path = resolve_resume(settings)
    if path is not None:
        check_compatible(load(path).settings, to_plain(settings))


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from server.federation import NoUpdateAggregated
    from server.preflight import prepare
    from simulations.launch import launch_simulation, quiet_frameworks

    quiet_frameworks()
    try:
        settings = to_settings(cfg)
        check_resume(settings)  # a resume that cannot work fails here, before any work
        prepare(settings)  # data, tokenizer and base checkpoint are cached for the workers
    except (ConfigError, DatasetPackageMissing, CheckpointError) as err:
        fail(str(err))
    try:
        launch_simulation(settings)
    except NoUpdateAggregated as err:  # the run ran but never moved the model: an error, not a success
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"done: summary in {settings.output_dir}/summary.json; MLflow store {settings.tracking.uri}")


if __name__ == "__main__":
    main()
