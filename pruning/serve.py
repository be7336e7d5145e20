"""Serve a global adapter (full coordinates, rank R) at any rank and sparsity: one-shot prune, merge.

Importance is the same LoRAPrune estimate the devices use, accumulated over a few calibration batches with
the global adapter attached (gradients of the LoRA factors only; no optimizer step). The adapter is truncated
to ``rank`` and sliced to the kept heads/channels, then merged into the pruned base: a plain, smaller model.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch

from models.evaluation import next_token_stats
from models.lora import attach_lora, load_adapter_arrays
from pruning.importance import ImportanceTracker
from pruning.prune import prune_model
from pruning.structure import Dims, Structure, select, slice_to


def importance_on(base, adapter: dict[str, np.ndarray], lora_cfg, max_rank: int, inputs, labels,
                  batch_size: int = 8, ema: float = 0.9) -> ImportanceTracker:
    peft = attach_lora(copy.deepcopy(base), lora_cfg, 0, max_rank)
    load_adapter_arrays(peft, adapter)
    for p in peft.parameters():
        p.grad = None
    tracker = ImportanceTracker(ema)
    for start in range(0, len(inputs), batch_size):
        loss_sum, _, tokens = next_token_stats(peft(input_ids=inputs[start:start + batch_size]).logits,
                                               labels[start:start + batch_size])
        peft.zero_grad(set_to_none=True)
        (loss_sum / max(tokens, 1)).backward()
        tracker.update(peft)
    return tracker


def serve(base, adapter: dict[str, np.ndarray], lora_cfg, max_rank: int, *, rank: int, sparsity: float,
          calib_inputs, calib_labels, head_rule: str = "within_groups", structure: Structure | None = None):
    """(merged pruned model, its structure). ``structure`` given: use it instead of calibration importance."""
    dims = Dims.of(base.config)
    dense = Structure.dense(dims)
    if structure is None:
        if sparsity > 0:
            tracker = importance_on(base, adapter, replace(lora_cfg, alpha=lora_cfg.alpha), max_rank,
                                    calib_inputs, calib_labels)
            heads, channels = tracker.full_scores(dense, dims)
            structure = select(heads, channels, dense, dims, sparsity, head_rule)
        else:
            structure = dense
    model = copy.deepcopy(base)
    if structure.sparsity(dims, base.config.hidden_size) > 0:
        prune_model(model, structure, dims)
    peft = attach_lora(model, replace(lora_cfg, alpha=lora_cfg.alpha * rank / max_rank), 0, rank)
    load_adapter_arrays(peft, slice_to(adapter, structure, dims, rank))
    merged = peft.merge_and_unload()
    merged.eval()
    return merged, structure


@torch.no_grad()
def latency_ms(model, seq_len: int, repeats: int = 20) -> float:
    """Median wall time of one batch-1 forward pass over ``seq_len`` tokens, on the model's device."""
    import time

    device = next(model.parameters()).device
    x = torch.randint(3, model.config.vocab_size, (1, seq_len), device=device)
    for _ in range(3):
        model(input_ids=x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(input_ids=x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def weight_bytes(model) -> int:
    """Bytes of the model's parameters and buffers as stored (what inference must hold in memory)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
