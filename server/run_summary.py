"""What a finished run reports: summary.json, generations, and why a run that never moved the model failed."""

from __future__ import annotations

import numpy as np

from models.generation import held_out_prompts, side_by_side, to_markdown
from runconfig.schema import Settings
from tracking.mlflow_tracker import MlflowTracker


def no_update_message(fault_log: list[dict], rounds: int) -> str:
    reasons = [f"device {e['device']} {e['outcome']}: {e['reason']} {e['detail']}".strip() for e in fault_log]
    first = f"; first problem: {reasons[0][:200]}" if reasons else ""
    return (f"no update was aggregated in {rounds} round(s) ({len(reasons)} device fault(s){first}). "
            "The global adapter is unchanged; see faults.json in the MLflow run")


def summarize(rounds_metrics: dict[int, dict[str, float]], settings: Settings, wall_s: float, run_id: str) -> dict:
    history = rounds_metrics
    rounds = sorted(r for r in history if r > 0)
    last = history[rounds[-1]] if rounds else {}
    base = history.get(0, {})
    overhead = [history[r]["timing/overhead_share"] for r in rounds]
    return {
        "mlflow_run_id": run_id,
        "method": settings.method.name,
        "model": settings.model.name,  # the model that is fine-tuned
        "fleet": settings.fleet.name,
        "fleet_size": settings.fleet.size,
        "rounds": len(rounds),
        "server_wall_s": wall_s,
        "sim_time_s": last.get("clock/sim_time_s", 0.0),
        "priced_as": settings.cost.priced_as,  # the model simulated time and bytes are charged for
        "clock": settings.cost.clock,
        "ppl_base": base.get("eval/global_ppl"),
        "ppl_final": last.get("eval/global_ppl"),
        "accuracy_base": base.get("eval/global_accuracy"),
        "accuracy_final": last.get("eval/global_accuracy"),
        "overhead_share": float(np.mean(overhead)) if overhead else None,
        "round_wall_s": float(np.mean([history[r]["timing/round_wall_s"] for r in rounds])) if rounds else None,
        "bytes_up": sum(history[r].get("comm/bytes_up", 0) for r in rounds),
        "bytes_down": sum(history[r].get("comm/bytes_down", 0) for r in rounds),
        "failures": sum(history[r].get("fleet/failures", 0) for r in rounds),
        "late": sum(history[r].get("fleet/late", 0) for r in rounds),
        "rejected": sum(history[r].get("fleet/rejected", 0) for r in rounds),
        "skipped_rounds": sum(history[r].get("fleet/skipped_round", 0) for r in rounds),
        "no_reply": sum(history[r].get("fleet/no_reply", 0) for r in rounds),
        "skipped_memory": sum(history[r].get("fleet/skipped_memory", 0) for r in rounds),
    }


def log_generations(peft_model, corpus, settings: Settings, tracker: MlflowTracker) -> None:
    """generations.md / .json: the base and the final model continuing fixed held-out-play prompts."""
    t = settings.tracking
    rows = side_by_side(peft_model, corpus.tokenizer, held_out_prompts(corpus, t.generations), t.generation_tokens)
    tracker.log_text(to_markdown(rows, settings.model.name, t.generation_tokens), "generations.md")
    tracker.log_dict({"model": settings.model.name, "max_new_tokens": t.generation_tokens, "decoding": "greedy",
                      "rows": rows}, "generations.json")
