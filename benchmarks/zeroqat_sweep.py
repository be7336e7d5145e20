"""ZeroQAT learning rate / perturbation sweep on a model (``python -m benchmarks.zeroqat_sweep [overrides]``).

The phones' defaults (conf/zeroqat/) were tuned on the 3.4M tiny-llama; on SmolLM2-135M lr 1e-2 / eps 1e-2
diverges and lr 1e-4 / eps 1e-3 does not move. This runs the project's own ``build_quantized`` + ``zo_train``
from the same quantized start for each (lr, eps) and measures held-out-play perplexity every few steps, so the
per-model defaults (conf/zeroqat/<model>.yaml) come from a measurement. Writes
docs/benchmarks/zeroqat_sweep.{md,json}.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

GRID = [(1e-3, 1e-3), (3e-3, 1e-3)]
STEPS, EVAL_EVERY, BATCH, EVAL_WINDOWS = 16, 8, 4, 16
OUT = Path("docs/benchmarks")


def main(overrides: list[str]) -> dict:
    from client.trainers.zeroqat import batch_loss
    from models.base_checkpoint import ensure_base_checkpoint, load_base_model, load_corpus
    from models.evaluation import evaluate_lm
    from runconfig.load import compose
    from server.central_evaluation import global_test_windows
    from textdata.corpus import windows
    from zeroqat.model import build_quantized, calibration_batches, trainable_tensors
    from zeroqat.spsa import step_seeds, zo_train

    torch.set_num_threads(2)
    s = compose(["+fleet=80dev", "model=smollm2-135m", *overrides])
    corpus = load_corpus(s)
    folder = ensure_base_checkpoint(s, corpus, show_progress=False)
    pad, seq = corpus.tokenizer.pad_token_id, s.data.seq_len
    gx, gy = global_test_windows(corpus, seq, EVAL_WINDOWS)
    public, _ = windows(corpus.public_ids, seq, pad)
    parts = [windows(corpus.client_train_ids(c), seq, pad) for c in range(corpus.num_clients)]
    tx, ty = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    ppl = lambda m: evaluate_lm(m, gx, gy).perplexity  # noqa: E731
    z = s.zeroqat
    out = {"model": s.model.name, "quant": z.quant, "group_size": z.group_size, "rank": s.method.lora.rank,
           "batch": f"{BATCH}x{seq}", "steps": STEPS, "eval_windows": EVAL_WINDOWS,
           "ppl_float": round(ppl(load_base_model(folder)), 2)}
    print(out, flush=True)
    model = build_quantized(load_base_model(folder), z, calibration_batches(public, z.calibration_windows),
                            s.method.lora, s.seed, s.method.lora.rank)
    tensors = list(trainable_tensors(model, "lora").values())
    start_state = [t.clone() for t in tensors]
    out["ppl_quantized_start"] = round(ppl(model), 2)
    print(out, flush=True)
    rng = np.random.default_rng(0)
    idx = [rng.choice(len(tx), BATCH, replace=False) for _ in range(STEPS)]
    runs = []
    for lr, eps in GRID:
        for t, t0 in zip(tensors, start_state):
            t.copy_(t0)
        curve, start = [], time.perf_counter()
        for chunk in range(STEPS // EVAL_EVERY):
            base = chunk * EVAL_EVERY
            with torch.inference_mode():
                zo_train(tensors, lambda t: batch_loss(model, tx[idx[base + t]], ty[idx[base + t]]),
                         step_seeds(chunk, EVAL_EVERY, z.perturbations), lr, z.lr_schedule, eps, z.grad_clip)
            value = ppl(model)
            curve.append([base + EVAL_EVERY, round(value, 2) if np.isfinite(value) else None])
            print(lr, eps, curve[-1], flush=True)
        runs.append({"lr": lr, "eps": eps, "curve": curve, "wall_s": round(time.perf_counter() - start, 1)})
        out["runs"] = runs
        OUT.mkdir(parents=True, exist_ok=True)  # written after every setting: a killed sweep keeps what it measured
        (OUT / "zeroqat_sweep.json").write_text(json.dumps(out, indent=2))
        (OUT / "zeroqat_sweep.md").write_text(report(out))
    return out


def report(r: dict) -> str:
    head = " | ".join(f"step {n}" for n, _ in r["runs"][0]["curve"])
    lines = [
        f"# ZeroQAT sweep on {r['model']} (`python -m benchmarks.zeroqat_sweep`)", "",
        f"{r['quant']}, group {r['group_size']}, LoRA rank {r['rank']} on all 7 projections, batch {r['batch']}, "
        f"the same {r['steps']} batches and the same quantized start for every row; held-out-play perplexity on "
        f"{r['eval_windows']} windows. Float base {r['ppl_float']}, quantized start {r['ppl_quantized_start']}.", "",
        f"| lr | eps | {head} |", "|---|---|" + "---|" * len(r["runs"][0]["curve"]),
    ]
    for run in r["runs"]:
        lines.append(f"| {run['lr']:g} | {run['eps']:g} | " + " | ".join(str(v) for _, v in run["curve"]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
