"""How much FedSpine's structured pruning alone costs a model (``python -m benchmarks.pruning_damage [overrides]``).

The pruned model is the dense base (default ``model=smollm2-135m``: SmolLM2-135M-Instruct as shipped, no adapter),
pruned in one shot from dense to each level with the project's own pruner (``pruning.structure.select``,
``pruning.prune.prune_model``, ``method.fedspine.head_rule``), then scored on held-out-play windows. Importance:

* ``public_activation`` -- what devices prune by under user-level DP (``masks=public``): each head's and channel's
  output contribution on the public split (``pruning.importance.public_scores``);
* ``public_weight`` -- the squared weight norms the public masks used before (``weight_scores``);
* ``local_lora`` -- LoRAPrune importance from one device's own data, as a device without DP accumulates it in its
  first round (fresh rank-8 adapter, ``client.local_steps`` backward passes, the trainer's EMA);
* ``random`` -- random scores (the floor any importance must beat).

Writes docs/benchmarks/pruning_damage.{md,json}; per-model FedSpine settings (conf/per_model/) come from it.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

LEVELS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5]
EVAL_WINDOWS = 16
OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def local_lora_scores(base, settings, corpus, dims, device_client: int = 0):
    """LoRAPrune importance from one device's own train windows (fresh adapter, as in its first round)."""
    from client.trainers.base import batch_indices
    from models.evaluation import next_token_stats
    from models.lora import attach_lora
    from pruning.importance import ImportanceTracker
    from pruning.structure import Structure
    from textdata.corpus import windows

    x, y = windows(corpus.client_train_ids(device_client), settings.data.seq_len, corpus.tokenizer.pad_token_id)
    peft = attach_lora(copy.deepcopy(base), settings.method.lora, settings.seed, 8)
    tracker = ImportanceTracker(settings.method.fedspine.importance_ema)
    for idx in batch_indices(len(x), settings.client.batch_size, settings.client.local_steps, settings.seed):
        loss_sum, _, tokens = next_token_stats(peft(input_ids=x[idx]).logits, y[idx])
        peft.zero_grad(set_to_none=True)
        (loss_sum / max(tokens, 1)).backward()
        tracker.update(peft)
    return tracker.full_scores(Structure.dense(dims), dims)


def main(overrides: list[str]) -> dict:
    from models.base_checkpoint import ensure_base_checkpoint, load_base_model, load_corpus
    from models.evaluation import evaluate_lm
    from pruning.importance import public_scores, weight_scores
    from pruning.prune import prune_model
    from pruning.structure import Dims, Structure, select
    from runconfig.load import compose
    from server.central_evaluation import global_test_windows

    torch.set_num_threads(2)
    s = compose(["+fleet=80dev", "model=smollm2-135m", "method=fedspine", *overrides])
    corpus = load_corpus(s)
    folder = ensure_base_checkpoint(s, corpus, show_progress=False)
    base = load_base_model(folder)
    dims, hidden, rule = Dims.of(base.config), base.config.hidden_size, s.method.fedspine.head_rule
    gx, gy = global_test_windows(corpus, s.data.seq_len, EVAL_WINDOWS)
    rng = np.random.default_rng(s.seed)
    t0 = time.perf_counter()
    scorers = {"public_activation": public_scores(folder, corpus, s.data.seq_len, dims)}
    public_s = time.perf_counter() - t0
    scorers["public_weight"] = weight_scores(base, dims)
    scorers["local_lora"] = local_lora_scores(base, s, corpus, dims)
    scorers["random"] = ([rng.random(dims.num_heads) for _ in range(dims.num_layers)],
                         [rng.random(dims.intermediate_size) for _ in range(dims.num_layers)])
    dense = evaluate_lm(base, gx, gy)
    out = {"model": s.model.name, "pruned_model": f"{s.model.name} dense base (no adapter), one-shot from dense",
           "head_rule": rule, "eval_windows": EVAL_WINDOWS, "seq_len": s.data.seq_len,
           "dims": {"layers": dims.num_layers, "heads": dims.num_heads, "kv_heads": dims.num_kv_heads,
                    "head_dim": dims.head_dim, "intermediate": dims.intermediate_size},
           "public_scores_s": round(public_s, 1), "ppl_dense": dense.perplexity, "acc_dense": dense.accuracy,
           "rows": []}
    for name, (heads, channels) in scorers.items():
        for level in LEVELS[1:]:
            structure = select(heads, channels, Structure.dense(dims), dims, level, rule)
            model = copy.deepcopy(base)
            prune_model(model, structure, dims)
            score = evaluate_lm(model, gx, gy)
            row = {"scorer": name, "level": level, "sparsity": round(structure.sparsity(dims, hidden), 4),
                   "kept_heads": structure.kept_heads(), "kept_channels": structure.kept_channels(),
                   "ppl": score.perplexity, "acc": score.accuracy}
            out["rows"].append(row)
            print(row, flush=True)
            del model
        OUT.mkdir(parents=True, exist_ok=True)  # written after every scorer: a killed run keeps what it measured
        (OUT / "pruning_damage.json").write_text(json.dumps(out, indent=2))
        (OUT / "pruning_damage.md").write_text(report(out))
    return out


def report(r: dict) -> str:
    d = r["dims"]
    scorers = list(dict.fromkeys(row["scorer"] for row in r["rows"]))
    levels = sorted({row["level"] for row in r["rows"]})
    cell = {(row["scorer"], row["level"]): row for row in r["rows"]}
    lines = [
        "# Pruning damage (`python -m benchmarks.pruning_damage`)", "",
        f"Pruned model: **{r['pruned_model']}** ({d['layers']} layers, {d['heads']} query heads in {d['kv_heads']} "
        f"KV groups, head_dim {d['head_dim']}, MLP {d['intermediate']}); nothing is trained or priced here. "
        f"Pruned with the project's pruner (head_rule {r['head_rule']}), scored on {r['eval_windows']} held-out-play "
        f"windows of {r['seq_len']} tokens. Dense: perplexity {r['ppl_dense']:.1f}, accuracy {r['acc_dense']:.4f}.",
        "", "Held-out perplexity after pruning to each level (level = share of MLP channels removed):", "",
        "| level | param sparsity | kept heads / channels | " + " | ".join(scorers) + " |",
        "|---|---|---|" + "---|" * len(scorers),
    ]
    for level in levels:
        any_row = cell[(scorers[0], level)]
        lines.append(f"| {level:g} | {any_row['sparsity']:.3f} | {any_row['kept_heads']} / {any_row['kept_channels']} | "
                     + " | ".join(f"{cell[(s, level)]['ppl']:.1f}" if (s, level) in cell else "-" for s in scorers)
                     + " |")
    lines += [
        "", "Scorers: `public_activation` -- each head's / channel's output contribution on the public split "
        f"(what masks=public uses under DP; {r['public_scores_s']} s to compute on this host); `public_weight` -- "
        "squared weight norms of the dense base (what masks=public used before); `local_lora` -- LoRAPrune "
        "importance from one device's own data in its first round (masks=local, no DP); `random` -- the floor.",
        "",
        "Reading: a level at which the query heads drop (within_groups keeps round(3 x (1 - level)) of the 3 query "
        "heads per KV group, so any level above 1/6 removes a third of all heads at once) is a cliff; below it "
        "only MLP channels go. The per-model FedSpine settings (conf/per_model/) keep arms below the cliff and "
        "take steps whose damage stays small.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
