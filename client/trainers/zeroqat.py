"""ZeroQAT on a device: SPSA steps (two forward passes each, no autograd) on a packed, pre-quantized base.

The trainable set is the fleet's LoRA adapter, so a phone's update aggregates with the Jetsons' backprop
adapters. With ``zeroqat.seed_upload`` the device sends (seeds, projected gradients) instead of the adapter.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from client.device_data import DeviceData
from client.runtime import ClientRuntime
from client.trainers.base import TrainResult, batch_indices, loss_metrics
from models.base_checkpoint import ensure_base_checkpoint, load_base_model
from models.evaluation import next_token_stats
from models.lora import adapter_arrays
from protocol.work import Work
from runconfig.schema import ZeroQATConfig
from textdata.corpus import windows
from zeroqat import upload
from zeroqat.model import build_quantized, calibration_batches, trainable_tensors
from zeroqat.spsa import step_seeds, zo_train

_MODELS: dict[tuple, torch.nn.Module] = {}  # per process: one quantized model per (settings, rank)


def _quantized_model(runtime: ClientRuntime, rank: int):
    s = runtime.settings
    key = (id(runtime), rank)
    if key not in _MODELS:
        _MODELS.clear()  # one live at a time, like runtime.adapter_model
        folder = ensure_base_checkpoint(s, runtime.corpus, show_progress=False)
        public, _ = windows(runtime.corpus.public_ids, s.data.seq_len, runtime.corpus.tokenizer.pad_token_id)
        calib = calibration_batches(public.to(runtime.device), s.zeroqat.calibration_windows)
        base = load_base_model(folder).to(runtime.device)  # quantized where it trains (client.device)
        # from the fp32 weights; what stays float (embeddings, norms) stays fp32: SPSA divides loss differences
        # by 2 eps, and a bf16 residual stream moved a round's update 4x more than autocast does (issue 21)
        _MODELS[key] = build_quantized(base, s.zeroqat, calib, s.method.lora, s.seed, rank)
    return _MODELS[key]


@torch.no_grad()
def batch_loss(model, x: torch.Tensor, y: torch.Tensor) -> float:
    loss_sum, _, tokens = next_token_stats(model(input_ids=x).logits, y)
    return loss_sum.item() / max(tokens, 1)


def zeroqat_local_training(model, cfg: ZeroQATConfig, data: DeviceData, work: Work) -> tuple[dict, dict, dict]:
    """Run a round's ZO steps on ``model`` in place; returns (adapter, seed upload, metrics)."""
    tensors = trainable_tensors(model, "lora")
    received = {k: t.detach().cpu().numpy().copy() for k, t in tensors.items()} if cfg.seed_upload else None
    batches = batch_indices(len(data.train_inputs), work.batch_size, work.local_steps, work.seed)
    seeds = step_seeds(work.seed, work.local_steps, cfg.perturbations)
    start = time.perf_counter()
    with torch.inference_mode():
        grads, losses = zo_train(
            list(tensors.values()),
            lambda t: batch_loss(model, data.train_inputs[batches[t]], data.train_labels[batches[t]]),
            seeds, cfg.lr, cfg.lr_schedule, cfg.eps, cfg.grad_clip,
        )
    compute_s = time.perf_counter() - start
    seed_upload = upload.encode(seeds, grads)
    adapter = adapter_arrays(model)
    if received is not None:
        # What the server will rebuild, bit for bit (the in-place probing differs only by float rounding).
        adapter = upload.replay_adapter(received, seed_upload, cfg.lr, cfg.lr_schedule)
    metrics = {**loss_metrics(losses), "compute_s": compute_s,
               "zo_grad_abs_mean": float(np.abs(grads).mean()),
               "adapter_bytes": float(sum(v.nbytes for v in adapter.values())),
               "seed_bytes": float(sum(v.nbytes for v in seed_upload.values()))}
    return adapter, seed_upload, metrics


class ZeroQATTrainer:
    name = "zeroqat"

    def model_for(self, runtime: ClientRuntime, work: Work):
        """The device's own model (quantized base + adapter), instead of the runtime's float one."""
        self.cfg = runtime.settings.zeroqat
        return _quantized_model(runtime, work.rank)

    def train(self, model, data: DeviceData, work: Work) -> TrainResult:
        if not hasattr(self, "cfg"):
            raise RuntimeError("ZeroQATTrainer.train needs the model from model_for(runtime, work) first")
        adapter, seed_upload, metrics = zeroqat_local_training(model, self.cfg, data, work)
        return TrainResult(adapter=adapter, num_examples=len(data.train_inputs), metrics=metrics,
                           upload=seed_upload if self.cfg.seed_upload else None)
