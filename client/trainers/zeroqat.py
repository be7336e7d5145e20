"""ZeroQAT on a device: SPSA steps (two forward passes each, no autograd) on a packed, pre-quantized base.

The trainable set is the fleet's LoRA adapter, so a phone's update aggregates with the Jetsons' backprop
adapters. With ``zeroqat.seed_upload`` the device sends (seeds, projected gradients) instead of the adapter.
K devices train at once on the multi-adapter copy of the quantized model (client/multi_adapter.py): each
perturbs its own adapter along its own seeded directions, one forward gives every device's L+ (then L-).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from client.device_data import DeviceData
from client.runtime import ClientRuntime
from client.trainers.base import (AdapterSet, DeviceTask, PeftAdapters, Trainer, TrainResult, batch_indices,
                                  loss_metrics, model_device, stacked_batch)
from models.base_checkpoint import ensure_base_checkpoint, load_base_model
from models.loss import mean_losses
from protocol.work import Work
from runconfig.schema import ZeroQATConfig
from textdata.corpus import windows
from zeroqat import upload
from zeroqat.model import build_quantized, calibration_batches
from zeroqat.spsa import step_seeds, zo_train_devices


def quantized_model(runtime: ClientRuntime, rank: int):
    """The runtime's quantized base with a rank-``rank`` PEFT adapter (built once per rank)."""
    s = runtime.settings

    def build():
        folder = ensure_base_checkpoint(s, runtime.corpus, show_progress=False)
        public, _ = windows(runtime.corpus.public_ids, s.data.seq_len, runtime.corpus.tokenizer.pad_token_id)
        calib = calibration_batches(public.to(runtime.device), s.zeroqat.calibration_windows)
        base = load_base_model(folder).to(runtime.device)  # quantized where it trains (client.device)
        # from the fp32 weights; what stays float (embeddings, norms) stays fp32: SPSA divides loss differences
        # by 2 eps, and a bf16 residual stream moved a round's update 4x more than autocast does (issue 21)
        return build_quantized(base, s.zeroqat, calib, s.method.lora, s.seed, rank)

    return runtime.cached_model("zeroqat", rank, build)


@torch.no_grad()
def batch_loss(model, x: torch.Tensor, y: torch.Tensor) -> float:
    """One device's mean next-token loss of a batch (what an SPSA probe evaluates)."""
    return mean_losses(model(input_ids=x).logits, y)[0]


def zo_rounds(adapters: AdapterSet, cfg: ZeroQATConfig, data: Sequence[DeviceData], works: Sequence[Work],
              received: Sequence[dict[str, np.ndarray]] | None = None) -> list[tuple[dict, dict, dict]]:
    """A round's SPSA steps for the K devices of ``adapters`` (same steps and batch size), in place; each
    device's (adapter, seed upload, metrics). ``received``: the adapters they started from (default: the loaded
    ones); with ``cfg.seed_upload`` the adapter is the server's replay of the upload, bit for bit."""
    k, w0 = adapters.count, works[0]
    if cfg.seed_upload and received is None:
        received = adapters.arrays()
    batches = [batch_indices(len(d.train_inputs), w.batch_size, w.local_steps, w.seed) for d, w in zip(data, works)]
    seeds = [step_seeds(w.seed, w.local_steps, cfg.perturbations) for w in works]
    device = model_device(adapters.model)

    def losses(t: int) -> list[float]:
        x, y = stacked_batch(data, batches, t, device)
        return mean_losses(adapters.logits(x), y, k)

    start = time.perf_counter()
    grads, step_losses = zo_train_devices(adapters.per_device(), losses, seeds, cfg.lr, cfg.lr_schedule, cfg.eps,
                                          cfg.grad_clip)  # under no_grad: nothing saved for a backward
    compute_s = time.perf_counter() - start
    out = []
    extra = {"batched_devices": float(k)} if k > 1 else {}
    for j, adapter in enumerate(adapters.arrays()):
        seed_upload = upload.encode(seeds[j], grads[j])
        if cfg.seed_upload:
            # What the server will rebuild, bit for bit (the in-place probing differs only by float rounding).
            adapter = upload.replay_adapter(received[j], seed_upload, cfg.lr, cfg.lr_schedule)
        metrics = {**loss_metrics(step_losses[j]), "compute_s": compute_s / k,
                   "zo_grad_abs_mean": float(np.abs(grads[j]).mean()),
                   "adapter_bytes": float(sum(v.nbytes for v in adapter.values())),
                   "seed_bytes": float(sum(v.nbytes for v in seed_upload.values())), **extra}
        out.append((adapter, seed_upload, metrics))
    return out


def train_zo(adapters: AdapterSet, cfg: ZeroQATConfig, data: Sequence[DeviceData], works: Sequence[Work],
             received: Sequence[dict[str, np.ndarray]] | None = None) -> list[TrainResult]:
    """:func:`zo_rounds` as train results (the seed upload sent instead of the delta with ``cfg.seed_upload``)."""
    return [TrainResult(adapter=adapter, num_examples=len(d.train_inputs), metrics=metrics,
                        upload=seed_upload if cfg.seed_upload else None)
            for (adapter, seed_upload, metrics), d in zip(zo_rounds(adapters, cfg, data, works, received), data)]


def zeroqat_local_training(model, cfg: ZeroQATConfig, data: DeviceData, work: Work) -> tuple[dict, dict, dict]:
    """One device's round on ``model`` (a PEFT model, its adapter loaded), in place; returns (adapter, seed
    upload, metrics)."""
    return zo_rounds(PeftAdapters(model), cfg, [data], [work])[0]


class ZeroQATTrainer(Trainer):
    name = "zeroqat"

    def batch_key(self, work: Work, settings) -> tuple | None:
        if settings.zeroqat.trainable != "lora":
            return None
        return (work.rank, work.local_steps, work.batch_size)  # ZeroQAT's lr is zeroqat.lr

    def train_devices(self, runtime, tasks: Sequence[DeviceTask]) -> list[TrainResult]:
        from models.lora import load_adapter_arrays

        cfg, rank = runtime.settings.zeroqat, tasks[0].work.rank
        model = quantized_model(runtime, rank)
        data = [runtime.device_data(t.work.device_index) for t in tasks]
        works = [t.work for t in tasks]
        received = [t.received for t in tasks]
        if len(tasks) == 1:
            load_adapter_arrays(model, received[0])
            return train_zo(PeftAdapters(model), cfg, data, works, received)
        from client.multi_adapter import quantized_multi_lora

        holder = quantized_multi_lora(runtime, model, rank).load(received, trainable=False)
        try:
            return train_zo(holder, cfg, data, works, received)
        finally:
            holder.release()
