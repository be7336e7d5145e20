"""Hydra entry point: ``python -m simulations.run +fleet=80dev [overrides]`` (``-m`` for sweeps).

Validates the composed config, prepares data and the base model in this process (with progress bars, before
Ray starts), then launches Flower once. Bad input ends with one clear message and exit code 2, and leaves no
output folder: the command line is checked before Hydra creates its run dir (:func:`precheck`), and a run
refused later (a model or data file that cannot be loaded) removes the run dir Hydra made for it.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from privacy.plan import resolve_plan
from runconfig.choices import PrivacyMode
from runconfig.errors import ConfigError
from runconfig.load import available, compose, fix_for_key, to_settings
from runconfig.plain import to_plain
from server.checkpoint import CheckpointError, check_compatible, load, resolve_resume
from textdata.shakespeare import DatasetPackageMissing

GROUPS = ("method", "cost", "fleet", "model", "data", "privacy", "simulation", "tracking", "zeroqat")
REFUSED = (ConfigError, DatasetPackageMissing, CheckpointError)
# Hydra's own flags: with them the command line is not a run to check
HYDRA_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--shell-completion", "-sc", "--version",
               "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--resolve", "--package", "-p")


def fail(message: str, run_dir: Path | None = None) -> None:
    if run_dir is not None:
        remove_run_dir(run_dir)
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def remove_run_dir(run_dir: Path) -> None:
    """The run dir Hydra made for a refused run, and its parents up to ``outputs/`` when they are left empty."""
    run_dir = run_dir.absolute()
    if not run_dir.is_dir() or run_dir == Path.cwd().absolute():
        return
    if any(p.name not in (".hydra", "main.log", "run.log") for p in run_dir.iterdir()):
        return  # something else was written there: keep it
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in list(run_dir.parents)[:2]:
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break


def check_resume(settings) -> None:
    path = resolve_resume(settings)
    if path is not None:
        check_compatible(load(path).settings, to_plain(settings))


def _group_problem(arg: str, multirun: bool) -> str | None:
    key, sep, value = arg.partition("=")
    group = key.lstrip("+~")
    if not sep or group not in GROUPS or key.startswith("~"):
        return None
    options = available(group)
    for option in value.split(",") if multirun else [value]:
        if option.strip() not in options:
            hint = "; a fleet is appended with '+', e.g. +fleet=80dev" if group == "fleet" else ""
            return f"config key '{group}': unknown option '{option}'. Fix: one of {', '.join(options)} (conf/{group}/){hint}"
    return None


def precheck(argv: list[str]) -> None:
    """Refuse a bad command line before Hydra runs (Hydra would print a multi-line error, exit 1, and leave an
    ``outputs/`` folder): every config-group option exists, and a single run's composed config validates."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if not a.startswith("-")]
    for arg in overrides:
        problem = _group_problem(arg, multirun)
        if problem:
            fail(problem)
    if multirun or any(a.split("=")[0] in HYDRA_FLAGS for a in argv):
        return
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        settings = compose([a for a in overrides if not a.startswith(("hydra.", "hydra/"))])
        check_resume(settings)
        if settings.privacy.mode == PrivacyMode.user:
            resolve_plan(settings)  # sigma's calibration (Opacus): an unreachable epsilon is refused here
    except REFUSED as err:
        fail(str(err))
    except (HydraException, OmegaConfBaseException) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        first = (lines[0] if lines else type(err).__name__).rstrip(".")
        named = re.search(r"override '([^']+)'", first) or re.search(r"[Kk]ey '([^']+)'", first)
        fix = fix_for_key(named.group(1)) if named else "check the override's key and value"
        fail(f"{first}. Fix: {fix} (conf/config.yaml lists the settings; `python -m simulations.run --cfg job` "
             "shows the composed config)")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from server.federation import NoUpdateAggregated
    from server.preflight import prepare
    from simulations.launch import launch_simulation, quiet_frameworks

    quiet_frameworks()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        settings = to_settings(cfg)
        check_resume(settings)  # a resume that cannot work fails here, before any work
        prepare(settings)  # data, tokenizer and base checkpoint are cached for the workers
    except REFUSED as err:
        fail(str(err), run_dir)
    except (OSError, ValueError) as err:  # a model or data that cannot be loaded (HFValidationError is a ValueError)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        fail(f"config key 'model.name_or_path' or 'data': could not load the model or data: {first}. Fix: an "
             "existing local folder/file, or a Hub id this host can reach", run_dir)
    try:
        launch_simulation(settings)
    except NoUpdateAggregated as err:  # the run ran but never moved the model: an error, not a success
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print("done")


if __name__ == "__main__":
    precheck(sys.argv[1:])
    main()
