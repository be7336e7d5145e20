"""One command reproduces the comparison: every method on the same fleet, data and seeds.

``python -m simulations.compare`` runs each (method, seed) through ``python -m simulations.run`` in its own
process, skipping those already finished (so a partial sweep resumes), groups them in one MLflow experiment
under a parent run, and writes ``docs/results.md`` with tables and PNG plots, also logged to MLflow. The README's
results block is regenerated from the same numbers, never typed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from simulations import results_report
from tracking.mlflow_tracker import EXPERIMENT_KIND, default_source, ui_hint

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Job:
    method: str
    seed: int
    overrides: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.method}-seed{self.seed}"


def parent_run(client: MlflowClient, experiment: str) -> str:
    """The comparison's parent run (reused when a partial sweep resumes)."""
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, tags=dict([EXPERIMENT_KIND]))
    found = client.search_runs([exp_id], "tags.edgefleet_role = 'comparison'", max_results=1)
    if found:
        return found[0].info.run_id
    program, command = default_source()
    tags = {**resolve_tags(), "mlflow.source.name": program, "command": command[:5000],
            "edgefleet_role": "comparison",
            "mlflow.note.content": "The comparison's parent run: one child run per (method, seed), its results "
                                   "table (`results.md`) and plots (`plots/`)."}
    return client.create_run(exp_id, run_name=experiment, tags=tags).info.run_id


def run_job(job: Job, cfg: DictConfig, parent_id: str, out: Path) -> None:
    cmd = [
        sys.executable, "-m", "simulations.run", f"+fleet={cfg.fleet_name}", f"method={job.method}", f"seed={job.seed}",
        *([f"rounds={cfg.rounds}"] if cfg.rounds is not None else []),
        f"tracking.uri={cfg.tracking_uri}", f"tracking.experiment={cfg.experiment}",
        f"tracking.parent_run_id={parent_id}", f"tracking.run_name={job.name}", f"hydra.run.dir={out}",
        *cfg.overrides, *job.overrides,
    ]
    log = out / "run.log"
    out.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"error: {job.name} failed (exit {proc.returncode}); see {log}")


@hydra.main(config_path="../conf", config_name="compare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    parent_id = parent_run(client, cfg.experiment)
    results = REPO / cfg.results_dir
    jobs = [Job(m, int(s), list(o or [])) for m, o in cfg.methods.items() for s in cfg.seeds]
    bar = tqdm(jobs, desc="comparison", unit="run")
    summaries = {}
    for job in bar:
        bar.set_postfix_str(job.name)
        out = results / job.name
        if not (out / "summary.json").exists():
            run_job(job, cfg, parent_id, out)
        summaries[job.name] = (job, json.loads((out / "summary.json").read_text()))
    report = results_report.build(client, summaries, cfg.target_ppl, REPO / cfg.docs_file)
    for png in report.figures:
        client.log_artifact(parent_id, str(png), "plots")
    client.log_text(parent_id, (REPO / cfg.docs_file).read_text(), "results.md")
    results_report.update_readme(REPO / cfg.readme_file, report)
    client.set_terminated(parent_id)
    print(f"done: {cfg.docs_file} (MLflow experiment '{cfg.experiment}', parent run {parent_id})")
    print(ui_hint(cfg.tracking_uri, client.get_run(parent_id).info.experiment_id, parent_id))
    print(OmegaConf.to_yaml({"headline": report.headline}))


if __name__ == "__main__":
    main()
