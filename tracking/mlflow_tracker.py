"""One MLflow run per simulation: the resolved config as params, per-round metrics, artifacts at the end.

Uses ``MlflowClient`` with an explicit run id rather than the fluent API, because the ServerApp runs in a
thread of its own in simulation (the fluent API's active run is per thread).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from runconfig.load import flatten, to_plain
from runconfig.schema import Settings

_BATCH = 100  # MLflow's limit of params per log_batch call


class MlflowTracker:
    def __init__(self, settings: Settings, tags: dict[str, str] | None = None, run_id: str | None = None) -> None:
        cfg = settings.tracking
        self.client = MlflowClient(tracking_uri=cfg.uri)
        self.tracking_uri = cfg.uri
        if run_id is not None:
            # resume: the same run goes on; its params were logged when it began (MLflow refuses changed ones)
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(cfg.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(cfg.experiment)
        name = cfg.run_name or f"{settings.method.name}-{settings.fleet.name}-seed{settings.seed}"
        run_tags = {"method": settings.method.name, "fleet": settings.fleet.name, "seed": str(settings.seed),
                    "priced_as": settings.cost.priced_as, "clock": settings.cost.clock, **(tags or {})}
        if cfg.parent_run_id:
            run_tags["mlflow.parentRunId"] = cfg.parent_run_id  # MLflow's nesting convention
        self.run_id = self.client.create_run(experiment_id, run_name=name, tags=run_tags).info.run_id
        plain = to_plain(settings)
        params = [Param(k, v[:6000]) for k, v in flatten(plain).items()]
        for i in range(0, len(params), _BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + _BATCH])
        self.log_text(OmegaConf.to_yaml(OmegaConf.create(plain)), "config/resolved.yaml")

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        now = int(mlflow.utils.time.get_current_time_millis())
        rows = [
            Metric(key, float(value), now, server_round)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and math.isfinite(float(value))
        ]
        for i in range(0, len(rows), 1000):
            self.client.log_batch(self.run_id, metrics=rows[i : i + 1000])

    def has_step(self, key: str, step: int) -> bool:
        return any(m.step == step for m in self.client.get_metric_history(self.run_id, key))

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dir(self, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        self.log_text(json.dumps(data, indent=2, sort_keys=True), artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="edgefleet-"))
