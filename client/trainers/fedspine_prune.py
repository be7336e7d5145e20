"""FedSpine's on-device prune-and-tune: LoRA tuning on a pruned sub-model whose sparsity rises in steps.

Per round, from the server: the global adapter (full coordinates at rank R, or -- ``extra.sliced`` -- only the
coordinates this device holds, at its rank), the device's kept-structure masks,
its arm (``work.rank`` and the round's target pruning ratio ``extra.ratio``) and the schedule. The device
prunes its own copy of the dense base to its structure, tunes LoRA at its rank, and every ``prune_every``
iterations (while below the target, and not after the last iteration) raises its pruning ratio by
``sparsity_step``, choosing what to remove by the LoRAPrune importance it accumulated over those iterations,
then continues tuning (recovery). The reply is the adapter delta in the final sub-model's coordinates with the
final masks. The optimizer's moments restart after each pruning step (the parameters are new tensors).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from client.trainers.base import DeviceTask, Trainer, TrainResult, batch_indices, loss_metrics, stacked_batch
from client.trainers.lora_backprop import backprop_step
from models.base_checkpoint import base_dir
from models.lora import adapter_arrays, attach_lora, load_adapter_arrays
from protocol.work import Work
from pruning.importance import ImportanceTracker, public_scores
from pruning.prune import prune_model
from pruning.schedule import step_levels
from pruning.structure import Dims, Structure, full_shape, scatter_from, select, slice_to




def ratio_of(structure: Structure, dims: Dims) -> float:
    """The pruning ratio a structure was selected at (share of MLP channels removed)."""
    return structure.level(dims)


def build_submodel(base, structure: Structure, dims: Dims, lora_cfg, rank: int, seed: int,
                   adapter_full: dict[str, np.ndarray]):
    """A pruned copy of ``base`` with a rank-``rank`` adapter loaded from full-coordinate tensors."""
    model = copy.deepcopy(base)
    if ratio_of(structure, dims) > 0 or not all(h.all() for h in structure.heads):
        prune_model(model, structure, dims)
    peft = attach_lora(model, lora_cfg, seed, rank)
    load_adapter_arrays(peft, slice_to(adapter_full, structure, dims, rank))
    return peft


def lora_update_norm(before: dict[str, np.ndarray], after: dict[str, np.ndarray], scaling: float) -> float:
    """||s (B'A' - BA)||_F summed over adapted modules: how much the device changed the effective weights."""
    total = 0.0
    for key in after:
        if ".lora_A." not in key:
            continue
        bkey = key.replace(".lora_A.", ".lora_B.")
        # B'A' - BA = [B', -B] [A'; A]; its squared norm from two small (2r x 2r) Gram matrices
        b = np.concatenate([after[bkey], -before[bkey]], axis=1).astype(np.float64)
        a = np.concatenate([after[key], before[key]], axis=0).astype(np.float64)
        total += float(np.sqrt(max(np.sum((b.T @ b) * (a @ a.T)), 0.0)) * scaling)
    return total


class FedSpinePruneTrainer(Trainer):
    """Each device prunes and tunes its own sub-model (their shapes differ): K devices train one after another."""

    name = "fedspine_prune"

    def train(self, model, data, work: Work) -> TrainResult:  # the common interface; FedSpine needs the base
        raise TypeError("fedspine_prune builds its own pruned model: call train_devices()")

    def train_devices(self, runtime, tasks: Sequence[DeviceTask]) -> list[TrainResult]:
        return [self.train_pruned(runtime, t.received, t.structure, t.work) for t in tasks]

    def train_pruned(self, runtime, received: dict[str, np.ndarray], structure_arrays: dict[str, np.ndarray],
                     work: Work) -> TrainResult:
        settings = runtime.settings
        x = work.extra
        base = runtime.dense_base()  # where the device trains, as the runtime holds it
        dims = Dims.of(base.config)
        structure = Structure.from_arrays(structure_arrays, dims)
        max_rank, rank = int(x["max_rank"]), int(work.rank)
        # the same scaling alpha/R at every rank, so a truncated adapter means the same thing as the global one
        lora_cfg = replace(settings.method.lora, alpha=float(x["alpha"]) * rank / max_rank)
        scaling = float(x["alpha"]) / max_rank
        full_shapes = {k: full_shape(k, dims, base.config.hidden_size, max_rank) for k in received}
        if x.get("sliced"):  # the server sent only this device's coordinates: place them in full coordinates
            placed, _ = scatter_from(received, structure, dims, rank, full_shapes)
            received = {k: v.astype(np.float32) for k, v in placed.items()}
        data = runtime.device_data(work.device_index)

        level = ratio_of(structure, dims)
        levels = step_levels(level, float(x["ratio"]), work.local_steps, int(x["prune_every"]),
                             float(x["sparsity_step"]))
        model = build_submodel(base, structure, dims, lora_cfg, rank, work.seed, received)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=work.lr,
                                      weight_decay=0.0)
        tracker = ImportanceTracker(float(x["importance_ema"]))
        losses, prune_steps, last_prune = [], 0, 0  # last_prune: iterations before the final structure's first
        start = time.perf_counter()
        batches = batch_indices(len(data.train_inputs), work.batch_size, work.local_steps, work.seed)
        model.train()
        for step in range(1, len(batches) + 1):
            inputs, labels = stacked_batch([data], [batches], step - 1, runtime.device)
            losses.append(backprop_step(model, optimizer, inputs, labels,
                                        before_step=lambda: tracker.update(model)).item())
            if step < len(batches) and levels[step] > level:  # the schedule prunes after this iteration
                level = levels[step]
                # masks=public (user-level DP): scores of the dense base on the public split, so the masks are public
                heads, channels = public_scores(base_dir(settings), runtime.corpus, settings.data.seq_len, dims) \
                    if x.get("masks") == "public" else tracker.full_scores(structure, dims)
                new = select(heads, channels, structure, dims, level, str(x["head_rule"]))
                current, _ = scatter_from(adapter_arrays(model), structure, dims, rank, full_shapes)
                tracker.heads = [h[new.heads[i]] for i, h in enumerate(heads)]  # keep the EMA, new coordinates
                tracker.channels = [c[new.channels[i]] for i, c in enumerate(channels)]
                structure = new
                model = build_submodel(base, structure, dims, lora_cfg, rank, work.seed, current)
                model.train()
                optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=work.lr,
                                              weight_decay=0.0)
                prune_steps += 1
                last_prune = step
        compute_s = time.perf_counter() - start
        model.eval()
        adapter = adapter_arrays(model)
        reference = slice_to(received, structure, dims, rank)
        trained = losses[last_prune:]  # the final structure's iterations: the model this device trained last
        return TrainResult(
            adapter=adapter,
            num_examples=len(data.train_inputs),
            metrics={
                **loss_metrics(losses),
                # its loss right after its last pruning step, before training on it: the start of the training
                # whose divergence validation judges (pruning damage itself is measured as quality, not as
                # divergence; strategies/update_validation.py, docs/fedspine.md)
                "loss_pruned": float(np.mean(trained[:max(1, len(trained) // 4)])),
                "compute_s": compute_s,
                "rank": float(rank),
                "ratio": float(level),
                "sparsity_before": structure_sparsity(Structure.from_arrays(structure_arrays, dims), base),
                "sparsity": structure_sparsity(structure, base),
                "prune_steps": float(prune_steps),
                "update_norm": lora_update_norm(reference, adapter, scaling),
            },
            reference=reference,
            structure=structure.to_arrays(),
        )


def structure_sparsity(structure: Structure, base) -> float:
    return structure.sparsity(Dims.of(base.config), base.config.hidden_size)
