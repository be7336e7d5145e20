"""Where a batched client call's time goes on this host, and what bounds its MFU: ``python -m benchmarks.step_anatomy``

The fleet's MFU (docs/benchmarks/fleet80.md) is the cost model's matmul FLOPs of client training over its
measured seconds, against this host's bf16 one-core peak. This benchmark takes that apart for the default fleet's
two batched trainers (backprop LoRA on the Jetsons, ZeroQAT on the phones), on the model the default run trains
(SmolLM2-135M-Instruct; ``--model`` for another) with the default run's local work (``client.local_steps`` steps
of ``client.batch_size`` x ``data.seq_len`` tokens, LoRA rank ``method.lora.rank``), one thread (what each of
``simulation=fast``'s two workers gets on a 2-core host), K devices a call (K = 2, 3, 4: a cohort of 8 dealt out
to two workers gives 2 to 4 of one trainer), once as shipped (``simulation=fast``: eager) and once with
``simulation.compile=true``, each mode in its own process (the compiled one with an empty inductor cache, so
its first-call compile cost is a fresh machine's).

Per configuration: a first call (compiles in compiled mode), then ``--calls`` timed calls (median).
MFU = FLOPs / seconds / peak, as ``benchmarks.throughput`` computes it. A profiled call per trainer and mode at
K = 3 splits the time into the dense GEMMs (``aten::mm``/``addmm``: every projection, the LM head, their input
gradients), the batched GEMMs (``bmm``/``baddbmm``: attention scores and the LoRA factors, rank 8: memory-bound)
and the rest (element-wise passes, casts, norms, rotary, loss, optimizer; generated kernels when compiled).
Since MFU = (the GEMMs' share of the time) x (the GEMMs' own MFU), the GEMMs' own MFU is the ceiling no
scheduling of the other work can lift, and the share says how much of the time the other work takes.

Writes docs/benchmarks/step_anatomy.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "benchmarks"
TRAINERS = ("lora_backprop", "zeroqat")
DEVICE_COUNTS = (2, 3, 4)
PROFILED_K = 3
DENSE_GEMM = ("aten::mm", "aten::addmm")
BATCHED_GEMM = ("aten::bmm", "aten::baddbmm", "aten::baddbmm_")


# ------------------------------------------------------------------------------------------------ child
def _tasks(runtime, trainer: str, k: int):
    """K devices' tasks with the default run's work, all starting from the fleet's initial adapter."""
    import copy

    from client.trainers.base import DeviceTask
    from models.lora import adapter_arrays, attach_lora
    from protocol.work import Work

    s = runtime.settings
    rank = s.method.lora.rank
    received = adapter_arrays(attach_lora(copy.deepcopy(runtime.dense_base()), s.method.lora, s.seed, rank))
    return [DeviceTask(Work(server_round=1, device_index=i, trainer=trainer, local_steps=s.client.local_steps,
                            batch_size=s.client.batch_size, lr=s.client.lr, rank=rank, seed=11 + i, extra={}),
                       received, {}) for i in range(k)]


def _profile(call) -> dict[str, float]:
    """Seconds of one call by kind of operator (self time: nothing counted twice)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    split = {"dense_gemm_s": 0.0, "batched_gemm_s": 0.0, "other_s": 0.0}
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        kind = "dense_gemm_s" if event.key in DENSE_GEMM else "batched_gemm_s" if event.key in BATCHED_GEMM \
            else "other_s"
        split[kind] += seconds
    return split


def child(overrides: list[str], calls: int, out: Path) -> None:
    """One mode in this process: every trainer and K, timed; K = PROFILED_K profiled."""
    import torch

    torch.set_num_threads(1)
    from client.runtime import get_runtime
    from client.trainers import get_trainer
    from client.trainers.base import run_tasks
    from fleet.cost_model import job_cost
    from fleet.pricing import Pricer
    from runconfig.load import compose
    from runconfig.plain import to_plain
    from server.preflight import prepare, trained_shape
    from simulations.launch import quiet_frameworks

    quiet_frameworks()
    settings = compose(overrides)
    prepared = prepare(settings, show_progress=False)
    pricer = Pricer(settings, trained_shape(settings, prepared.base_folder))
    runtime = get_runtime(to_plain(settings))
    rows = []
    for trainer in TRAINERS:
        job = pricer.job(trainer, settings.method.lora.rank, settings.client.batch_size, settings.client.local_steps)
        flops = job_cost(pricer.shape, job, pricer.kernels).total().gemm_flops
        for k in DEVICE_COUNTS:
            tasks = _tasks(runtime, trainer, k)
            call = lambda: run_tasks(get_trainer(trainer), runtime, tasks)  # noqa: E731
            start = time.perf_counter()
            call()
            first = time.perf_counter() - start
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            row = {"trainer": trainer, "k": k, "first_call_s": round(first, 3),
                   "call_s": round(statistics.median(times), 3), "gemm_flops": flops * k}
            if k == PROFILED_K:
                row.update({key: round(v, 3) for key, v in _profile(call).items()})
            rows.append(row)
            print(json.dumps(row), flush=True)
    out.write_text(json.dumps({"overrides": overrides, "model": settings.model.name, "rows": rows,
                               "work": {"steps": settings.client.local_steps, "batch": settings.client.batch_size,
                                        "seq_len": settings.data.seq_len, "rank": settings.method.lora.rank,
                                        "quant": settings.zeroqat.quant}}))


def _run_child(overrides: list[str], calls: int, work: Path, name: str, env_extra: dict) -> dict:
    out = work / f"{name}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **env_extra}
    subprocess.run([sys.executable, "-m", "benchmarks.step_anatomy", "--child", str(out), "--calls", str(calls),
                    "--", *overrides], cwd=REPO, check=True, env=env)
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------------------------ analysis
def analyse(modes: dict[str, dict], peak_gflops: float) -> dict:
    """Per mode, trainer and K: MFU; at the profiled K: the time split, the GEMMs' own MFU and their share."""
    out: dict = {}
    for mode, run in modes.items():
        for r in run["rows"]:
            row = {**r, "mfu": round(r["gemm_flops"] / r["call_s"] / 1e9 / peak_gflops, 4)}
            if "dense_gemm_s" in r:
                total = r["dense_gemm_s"] + r["batched_gemm_s"] + r["other_s"]
                gemm = r["dense_gemm_s"] + r["batched_gemm_s"]
                row["gemm_share"] = round(gemm / total, 3)
                row["gemm_own_mfu"] = round(r["gemm_flops"] / gemm / 1e9 / peak_gflops, 4)
            out.setdefault(mode, {}).setdefault(r["trainer"], {})[str(r["k"])] = row
    return out


def render(result: dict) -> str:
    a, h = result["anatomy"], result["host"]
    w = result["work"]
    lines = [
        "# Anatomy of a batched client call: `python -m benchmarks.step_anatomy`",
        "",
        f"Trained and priced: {result['model']}. Measured on {result['machine']}, torch {result['torch']}, one "
        f"thread (one of `simulation=fast`'s two workers on a 2-core host). Work per device: the default run's, "
        f"{w['steps']} steps of {w['batch']} x {w['seq_len']} tokens, LoRA rank {w['rank']} (ZeroQAT: "
        f"{w['quant']}, 2 forwards a step); K devices a call. Host bf16 one-core matmul peak "
        f"{h['gflops_bf16_1core']} GFLOP/s (square GEMM, benchmarks.throughput); MFU = the cost model's GEMM "
        f"FLOPs / the call's median seconds / that peak. `compiled` = `simulation.compile=true`, its first call "
        f"compiled from an empty inductor cache. Benchmark wall time {result['wall_s']:.0f} s.",
        "",
        "| trainer | K | eager call (s) | compiled call (s) | speed-up | eager MFU | compiled MFU | compiled first call "
        "(s, compile included) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for trainer in TRAINERS:
        for k in map(str, DEVICE_COUNTS):
            e, c = a["eager"][trainer][k], a["compiled"][trainer][k]
            lines.append(f"| {trainer} | {k} | {e['call_s']} | {c['call_s']} | {e['call_s'] / c['call_s']:.2f}x | "
                         f"{e['mfu']} | {c['mfu']} | {c['first_call_s']} |")
    lines += [
        "",
        f"## Where the time goes (K = {PROFILED_K}, one profiled call, profiler self time)",
        "",
        "| trainer | mode | dense GEMMs (s) | batched GEMMs: attention, LoRA (s) | everything else (s) | GEMM share "
        "of the time | the GEMMs' own MFU | MFU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    k = str(PROFILED_K)
    for trainer in TRAINERS:
        for mode in ("eager", "compiled"):
            r = a[mode][trainer][k]
            lines.append(f"| {trainer} | {mode} | {r['dense_gemm_s']} | {r['batched_gemm_s']} | {r['other_s']} | "
                         f"{r['gemm_share']:.0%} | {r['gemm_own_mfu']} | {r['mfu']} |")
    lines += ["", "## Reading", "", *result["reading"], "", "## Notes", "", *NOTES, ""]
    return "\n".join(lines)


NOTES = [
    "- The batched GEMMs are memory-bound: a LoRA factor at rank 8 ([K, T, 576 or 1,536] x [K, 576 or 1,536, 8] and "
    "its gradients) reads a whole activation for a few FLOPs, and attention multiplies 64 x 64 blocks per head. "
    "Compilation leaves them to the same library kernels, so they keep their time in both modes.",
    "- Tried and not kept: torch's SDPA attention (its CPU flash kernel was ~3.5x slower forward+backward in bf16 "
    "at these shapes, docs/benchmarks/throughput.md); compiling with dynamic shapes (one graph for every K: its "
    "code ran ~6x slower than eager and its compile took minutes, so `simulation.compile` compiles each K).",
    "- The fleet's MFU (docs/benchmarks/fleet80.md) is lower than a call's here: it also counts devices trained "
    "alone (K = 1, the plain PEFT path), every round's per-call set-up and the calls that meet a new K first.",
    "- `simulation.compile` stays off by default: the default run is 4 rounds, and its workers meet 2-4 shapes "
    "per trainer (each K, training and evaluation), so compiling them costs more than it saves there.",
]


def reading(a: dict) -> list[str]:
    """What bounds the MFU, in numbers from this run."""
    k = str(PROFILED_K)
    out = []
    for trainer in TRAINERS:
        e, c = a["eager"][trainer][k], a["compiled"][trainer][k]
        line = (f"- {trainer}, K = {k}: MFU {e['mfu']} eager, {c['mfu']} compiled. Its GEMMs run at MFU "
                f"{c['gemm_own_mfu']} on their own and take {e['gemm_share']:.0%} of the eager call, "
                f"{c['gemm_share']:.0%} of the compiled one.")
        if c["gemm_own_mfu"] > 0.4:
            line += (f" An MFU of 0.40 needs them to take {0.4 / c['gemm_own_mfu']:.0%}: everything else (element-"
                     "wise passes, casts, attention's softmax, the loss, the optimizer) would have to take "
                     f"{(1 - 0.4 / c['gemm_own_mfu']) / (1 - c['gemm_share']):.0%} of the time it takes compiled.")
        else:
            line += " Below 0.40 on their own: no schedule of the rest reaches 0.40 at this shape."
        compile_s = c["first_call_s"] - c["call_s"]
        saved = e["call_s"] - c["call_s"]
        if saved > 0:
            line += (f" Compiling this shape cost {compile_s:.1f} s once and saves {saved:.2f} s a call: it pays back "
                     f"after {compile_s / saved:.0f} calls of the shape (a worker makes about one per round).")
        out.append(line)
    return out


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per configuration (median)")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (e.g. model=tiny-llama for a quick look)")
    parser.add_argument("--report-only", action="store_true", help="re-render the page from its JSON")
    args = parser.parse_args(argv)
    if args.report_only:
        result = json.loads((OUT / "step_anatomy.json").read_text())
        result["reading"] = reading(result["anatomy"])
        (OUT / "step_anatomy.json").write_text(json.dumps(result, indent=1))
        (OUT / "step_anatomy.md").write_text(render(result))
        return result
    if args.child is not None:
        child(args.overrides, args.calls, args.child)
        return {}
    import torch

    from benchmarks.throughput import host_peaks

    base = ["+fleet=80dev", "simulation=fast", *args.overrides]
    work = Path(tempfile.mkdtemp(prefix="step-anatomy-"))
    start = time.perf_counter()
    modes = {"eager": _run_child(base, args.calls, work, "eager", {}),
             "compiled": _run_child([*base, "simulation.compile=true"], args.calls, work, "compiled",
                                    {"TORCHINDUCTOR_CACHE_DIR": str(work / "inductor")})}
    wall = time.perf_counter() - start
    print("host matmul peak ...", flush=True)
    peaks = host_peaks()
    anatomy = analyse(modes, peaks["gflops_bf16_1core"])
    result = {"model": modes["eager"]["model"], "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "torch": torch.__version__, "work": modes["eager"]["work"], "host": peaks, "wall_s": round(wall, 1),
              "anatomy": anatomy, "reading": reading(anatomy),
              "mfu_eager_k3": anatomy["eager"]["lora_backprop"][str(PROFILED_K)]["mfu"],
              "mfu_compiled_k3": anatomy["compiled"]["lora_backprop"][str(PROFILED_K)]["mfu"]}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "step_anatomy.json").write_text(json.dumps(result, indent=1))
    (OUT / "step_anatomy.md").write_text(render(result))
    print(render(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
