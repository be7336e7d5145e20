"""One MLflow run per simulation: the resolved config as params, per-round metrics, artifacts at the end.

Uses ``MlflowClient`` with an explicit run id rather than the fluent API, because the ServerApp runs in a
thread of its own in simulation (the fluent API's active run is per thread).

MLflow 3's UI opens an experiment in its GenAI view (traces) unless told otherwise, and lists a run without a
logged model as an "evaluation run". So the run carries MLflow's source/user tags and a description that
explains its metrics, the final adapter is the run's output model, and ``ui_link`` opens the model-training
view (``workflowType=machine_learning``: the Runs list).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import mlflow
from mlflow.entities import LoggedModelOutput, Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from omegaconf import OmegaConf

from runconfig.plain import flatten, to_plain
from runconfig.schema import Settings
from tracking.glossary import glossary_markdown, run_description

_BATCH = 100  # MLflow's limit of params per log_batch call


UI_VIEW = "workflowType=machine_learning"  # MLflow 3.x UI: the model-training view (Runs), not GenAI (Traces)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # what MLflow's UI reads for the kind


def default_source() -> tuple[str, str]:
    """(program, full command) of this process: MLflow's "Source" shows the program (its UI cuts a source name
    at the last "/", so the arguments, with their paths, go to the ``command`` tag)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = f"python -m {spec.name}" if spec is not None and spec.name else Path(sys.argv[0]).name or "python"
    return program, " ".join([program, *sys.argv[1:]])


class MlflowTracker:
    def __init__(self, settings: Settings, tags: dict[str, str] | None = None, run_id: str | None = None,
                 source: tuple[str, str] | None = None) -> None:
        """``source``: (program, full command) that started the run; default: this process's."""
        cfg = settings.tracking
        self.client = MlflowClient(tracking_uri=cfg.uri)
        self.tracking_uri = cfg.uri
        self.rounds = settings.rounds
        if run_id is not None:
            # resume: the same run goes on; its params were logged when it began (MLflow refuses changed ones)
            self.run_id = run_id
            self.experiment_id = self.client.get_run(run_id).info.experiment_id
            self.client.update_run(run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(cfg.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            cfg.experiment, tags=dict([EXPERIMENT_KIND]))
        self.experiment_id = experiment_id
        name = cfg.run_name or f"{settings.method.name}-{settings.fleet.name}-seed{settings.seed}"
        program, command = source or default_source()
        run_tags = {
            **resolve_tags(),  # MLflow's own: mlflow.user, mlflow.source.type, git commit where there is one
            "mlflow.source.name": program, "command": command[:5000],
            "mlflow.note.content": run_description(settings),  # the run's description in the UI
            "model": settings.model.name, "method": settings.method.name, "fleet": settings.fleet.name,
            "seed": str(settings.seed), "priced_as": settings.cost.priced_as, "clock": settings.cost.clock,
            **(tags or {}),
        }
        if cfg.parent_run_id:
            run_tags["mlflow.parentRunId"] = cfg.parent_run_id  # MLflow's nesting convention
        self.run_id = self.client.create_run(experiment_id, run_name=name, tags=run_tags).info.run_id
        self.log_text(glossary_markdown(), "metrics_glossary.md")
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

    def log_adapter(self, adapter_dir: Path) -> None:
        """The final adapter: a run artifact (``adapter/``) and the run's output model, which is what makes
        MLflow's UI count the run as a training run rather than an evaluation run."""
        self.log_dir(adapter_dir, "adapter")
        model = self.client.create_logged_model(self.experiment_id, name="adapter", source_run_id=self.run_id,
                                                model_type="peft-lora")
        self.client.log_model_artifacts(model.model_id, str(adapter_dir))
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, self.rounds)])

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def ui_hint(self) -> str:
        """How to look at this run: the ``mlflow ui`` command for a local store, and the links to open."""
        return ui_hint(self.tracking_uri, self.experiment_id, self.run_id)


def ui_base(tracking_uri: str) -> tuple[str | None, str]:
    """(the command that serves a local store, or None for a tracking server; the UI's base URL)."""
    if tracking_uri.startswith(("http://", "https://")):
        return None, tracking_uri.rstrip("/")
    return f"mlflow ui --backend-store-uri {tracking_uri}", "http://127.0.0.1:5000"


def ui_link(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The experiment's Runs list (or one run's page) in MLflow's model-training view."""
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{ui_base(tracking_uri)[1]}/#/experiments/{experiment_id}/{page}?{UI_VIEW}"


def ui_hint(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    serve, _ = ui_base(tracking_uri)
    lines = [f"MLflow: {serve}   # then open" if serve else "MLflow:",
             f"  runs: {ui_link(tracking_uri, experiment_id)}",
             f"  this run: {ui_link(tracking_uri, experiment_id, run_id)}"]
    return "\n".join(lines)


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="edgefleet-"))
