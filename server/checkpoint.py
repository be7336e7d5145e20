"""Server checkpoints: everything needed to continue a run from its last complete round.

One file, ``<checkpoint dir>/latest.ckpt``, rewritten after every round (``checkpoint.enabled``). A file is
``MAGIC``, the SHA-256 of the payload in hex, a newline, then the payload: a pickle of :class:`Checkpoint`
(the global adapter as numpy arrays, the strategy's ``get_state()``, the global RNG states, every round's
metrics, the MLflow run id and the run's plain settings). Writes go to a temporary file in the same folder,
are fsynced, and replace the old file with ``os.replace`` (atomic on POSIX): a crash mid-write leaves the
last good checkpoint in place, and a torn file fails its digest rather than loading garbage.

Checkpoints are pickles: load only your own (they are local files the run wrote, never downloaded input).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runconfig.errors import ConfigError
from runconfig.plain import flatten

FORMAT = 1
MAGIC = b"EDGEFLEET-CHECKPOINT\n"
FILENAME = "latest.ckpt"
RUN_TAG = "edgefleet.checkpoint"  # MLflow tag holding the run's checkpoint path (resume by run id)

# Settings a resumed run may change: they do not touch the results (or, for rounds, only extend them).
RESUMABLE_CHANGES = ("resume", "output_dir", "rounds", "cache_dir", "simulation.", "federation.round_timeout_s",
                     "tracking.log_adapter", "tracking.run_name", "checkpoint.")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (torn, foreign, or another format)."""


@dataclass
class Checkpoint:
    server_round: int  # the last complete round
    arrays: dict[str, np.ndarray]  # the global adapter after that round
    strategy_state: dict[str, Any]  # FleetFedAvg.get_state(): clock, model version, subclass state
    history: dict[int, dict[str, float]]  # every round's metrics so far (0: before training)
    mlflow_run_id: str
    settings: dict[str, Any]  # runconfig.load.to_plain of the run
    rng_state: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT


def rng_state() -> dict[str, Any]:
    """Global RNG states (python, numpy, torch) for hooks that draw from them (e.g. server-side DP noise)."""
    import torch  # here, not at the top: checking a resume (simulations.run's precheck) imports no torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        import torch

        torch.set_rng_state(state["torch"])


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Write atomically: temp file in the same folder, fsync, ``os.replace``, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        payload = pickle.dumps(checkpoint, protocol=pickle.HIGHEST_PROTOCOL)
        with open(tmp, "wb") as f:
            f.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def load(path: Path) -> Checkpoint:
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path} is not an edgefleet checkpoint")
    digest, _, payload = data[len(MAGIC) :].partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(f"{path} is damaged (its digest does not match)")
    checkpoint = pickle.loads(payload)
    if not isinstance(checkpoint, Checkpoint) or checkpoint.format != FORMAT:
        raise CheckpointError(f"{path} has another checkpoint format (expected {FORMAT})")
    return checkpoint


def checkpoint_path(settings) -> Path:
    folder = settings.checkpoint.dir or str(Path(settings.output_dir) / "checkpoint")
    return Path(folder).absolute() / FILENAME


def _truthy(value: str | None) -> bool | None:
    if value is None or value.strip().lower() in ("", "false", "none", "null", "no", "0"):
        return False
    return True if value.strip().lower() in ("true", "yes", "1", "latest") else None


def resolve_resume(settings) -> Path | None:
    """The checkpoint ``resume=`` points at: true (the latest unfinished run of the experiment with a
    checkpoint), a checkpoint file or folder, or an MLflow run id. None when not resuming."""
    value = settings.resume
    flag = _truthy(value)
    if flag is False:
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking.uri)
    if flag is True:
        experiment = client.get_experiment_by_name(settings.tracking.experiment)
        runs = [] if experiment is None else client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{RUN_TAG}` != '' and attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            raise ConfigError(
                f"config key 'resume': no unfinished run with a checkpoint in experiment "
                f"'{settings.tracking.experiment}' of {settings.tracking.uri}. Fix: resume=<checkpoint path or "
                "MLflow run id>, the same tracking.uri as the interrupted run, or drop resume to start afresh"
            )
        return _existing(Path(runs[0].data.tags[RUN_TAG]), value)
    candidate = Path(value).expanduser()
    if candidate.exists():
        for p in (candidate, candidate / FILENAME, candidate / "checkpoint" / FILENAME):
            if p.is_file():
                return p.absolute()
        raise ConfigError(f"config key 'resume': no {FILENAME} in {candidate}. Fix: the run's output or checkpoint dir")
    try:
        run = client.get_run(value)
    except MlflowException:
        raise ConfigError(
            f"config key 'resume': '{value}' is neither a checkpoint path nor an MLflow run id in "
            f"{settings.tracking.uri}. Fix: resume=true, a path, or a run id from the MLflow UI"
        ) from None
    if RUN_TAG not in run.data.tags:
        raise ConfigError(f"config key 'resume': run {value} has no checkpoint (tag {RUN_TAG}). Fix: start afresh")
    return _existing(Path(run.data.tags[RUN_TAG]), value)


def _existing(path: Path, value: str) -> Path:
    if not path.is_file():
        raise ConfigError(
            f"config key 'resume': no checkpoint at {path} for '{value}' (the run stopped before its first round "
            "ended, or the file was moved). Fix: resume=<checkpoint path>, or start afresh"
        )
    return path


def check_compatible(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """A resumed run must compute what the interrupted one would have: only RESUMABLE_CHANGES may differ."""
    old, new = flatten(saved), flatten(current)
    changed = sorted(k for k in old.keys() | new.keys()
                     if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES))
    if changed:
        shown = ", ".join(f"{k} ({old.get(k)} -> {new.get(k)})" for k in changed[:5])
        raise ConfigError(
            f"config key 'resume': the checkpoint was written with other settings: {shown}. Fix: resume with the "
            "interrupted run's overrides (its config is in MLflow, config/resolved.yaml), or start a new run"
        )


class RoundCheckpointer:
    """Writes a checkpoint at the end of every round (``FleetFedAvg.round_end_hooks``)."""

    def __init__(self, path: Path, strategy, run_id: str, settings: dict[str, Any],
                 history: dict[int, dict[str, float]] | None = None) -> None:
        self.path, self.strategy, self.run_id, self.settings = path, strategy, run_id, settings
        self.history: dict[int, dict[str, float]] = dict(history or {})

    def __call__(self, server_round: int, arrays: dict[str, np.ndarray], metrics: dict[str, float]) -> None:
        self.history[server_round] = dict(metrics)
        if server_round == 0:
            return
        save(self.path, Checkpoint(
            server_round=server_round,
            arrays=arrays,
            strategy_state=self.strategy.get_state(),
            history=self.history,
            mlflow_run_id=self.run_id,
            settings=self.settings,
            rng_state=rng_state(),
        ))
