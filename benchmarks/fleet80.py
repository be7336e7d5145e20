"""Benchmark of the default run: ``python -m simulations.run +fleet=80dev`` from a cold cache.

Runs the default configuration once in a subprocess from a cold cache (the base model's preparation included:
for SmolLM2-135M the GGUF-to-checkpoint conversion and tokenization), through ``benchmarks.throughput.child``,
which launches exactly what ``simulations.run`` launches and also records every reply's work, so the MFU of
client training is computed as ``python -m benchmarks.throughput`` computes it (model GEMM FLOPs of the replies
over their compute seconds, against this host's measured matmul peak for the precision and threads used).
Then reads the run's metrics back from its MLflow store. Prints a table and writes
docs/benchmarks/fleet80.{md,json,png}.

    python -m benchmarks.fleet80 [extra Hydra overrides]
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "benchmarks"


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def main(extra: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fleet80-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    overrides = ["+fleet=80dev", f"tracking.uri={uri}", f"cache_dir={work / 'cache'}", f"output_dir={work / 'out'}",
                 *extra]
    record = work / "replies.json"
    cmd = [sys.executable, "-c", "import sys; from pathlib import Path; from benchmarks.throughput import child; "
           "child(sys.argv[1:-1], Path(sys.argv[-1]))", *overrides, str(record)]
    print("running: python -m simulations.run", " ".join(overrides), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    wall_s = time.perf_counter() - start
    from benchmarks.throughput import analyse, host_peaks

    print("host matmul peak ...", flush=True)
    work_stats = analyse(json.loads(record.read_text()), host_peaks())

    summary = json.loads((work / "out" / "summary.json").read_text())
    client = MlflowClient(tracking_uri=uri)
    run_id = summary["mlflow_run_id"]
    ppl = history(client, run_id, "eval/global_ppl")
    acc = history(client, run_id, "eval/global_accuracy")
    sim = history(client, run_id, "clock/sim_time_s")
    overhead = history(client, run_id, "timing/overhead_share")
    round_wall = history(client, run_id, "timing/round_wall_s")
    result = {
        "model": summary.get("model"),  # the model that is fine-tuned (and, with cost=trained, priced)
        "wall_s": round(wall_s, 1),
        "mfu": work_stats["mfu"],  # client training, as benchmarks.throughput computes it
        "mfu_peak": work_stats["mfu_peak"],
        "client_achieved_gflops": work_stats["achieved_gflops"],
        "rounds": summary["rounds"],
        "sim_time_s": round(summary["sim_time_s"], 2),
        "priced_as": f"{summary.get('priced_as', 'trained')} ({summary.get('clock', 'host_scaled')} clock)",
        "ppl_base": round(summary["ppl_base"], 3),
        "ppl_final": round(summary["ppl_final"], 3),
        "ppl_improvement": round(1 - summary["ppl_final"] / summary["ppl_base"], 4),
        "accuracy_base": round(summary["accuracy_base"], 4),
        "accuracy_final": round(summary["accuracy_final"], 4),
        "overhead_share": round(summary["overhead_share"], 4),
        "mean_round_wall_s": round(sum(round_wall.values()) / len(round_wall), 2),
        "server_wall_s": round(summary["server_wall_s"], 1),
        "bytes_up": summary["bytes_up"],
        "bytes_down": summary["bytes_down"],
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "command": "python -m simulations.run +fleet=80dev " + " ".join(extra),
        "per_round": {str(r): {"global_ppl": ppl[r], "global_accuracy": acc.get(r),
                               "sim_time_s": sim.get(r, 0.0), "overhead_share": overhead.get(r)}
                      for r in sorted(ppl)},
    }
    write(result)
    return result


def write(result: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "fleet80.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        ("model fine-tuned", result.get("model"), ""),
        ("wall time, cold cache (s)", result["wall_s"], "<= 600 warm"),
        ("rounds", result["rounds"], ""),
        (f"simulated fleet time (s), priced as {result.get('priced_as', 'trained (host_scaled clock)')}",
         result["sim_time_s"], ""),
        ("global perplexity, base model", result["ppl_base"], ""),
        ("global perplexity, after fine-tuning", result["ppl_final"], ""),
        ("perplexity improvement", f"{100 * result['ppl_improvement']:.1f}%", ">= 25%"),
        ("next-token accuracy base -> final", f"{result['accuracy_base']:.4f} -> {result['accuracy_final']:.4f}", ""),
        ("framework overhead share of round wall time", f"{100 * result['overhead_share']:.1f}%", "<= 25%"),
        ("mean round wall time (s)", result["mean_round_wall_s"], ""),
        (f"MFU of client training ({result.get('mfu_peak')})", result.get("mfu"), ">= 0.4"),
        ("bytes up / down", f"{result['bytes_up']:,} / {result['bytes_down']:,}", ""),
    ]
    lines = [
        "# Default fleet run: `python -m simulations.run +fleet=80dev`",
        "",
        f"Measured by `python -m benchmarks.fleet80` on {result['machine']} (cold cache: the base model's "
        "preparation, GGUF conversion or pretraining, included in the wall time). Overhead share = 1 - (client compute seconds / (concurrent workers x wall "
        "seconds of the federated train+evaluate phases)), averaged over rounds.",
        "",
        "| quantity | value | target |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        "What bounds the MFU (the GEMMs' own rate at these shapes, and the share of a call the rest takes, eager "
        "and with `simulation.compile=true`): `python -m benchmarks.step_anatomy`, [step_anatomy.md](step_anatomy.md).",
        "",
        "![global perplexity per round](fleet80.png)",
        "",
    ]
    (OUT / "fleet80.md").write_text("\n".join(lines))
    per_round = result["per_round"]
    rounds = sorted(int(r) for r in per_round)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(rounds, [per_round[str(r)]["global_ppl"] for r in rounds], marker="o")
    ax.axhline(result["ppl_base"] * 0.75, color="grey", linestyle="--", label="25% below base")
    ax.set_xlabel("round")
    ax.set_ylabel("global test perplexity")
    ax.set_title(f"+fleet=80dev, federated LoRA on {result.get('model')}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "fleet80.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
