"""Backpropagation LoRA fine-tuning (AdamW on the adapter only; the base stays frozen), for K devices at once.

K = 1 trains the PEFT model; K > 1 the multi-adapter model (client/multi_adapter.py), whose step minimises the
sum of the devices' own mean losses, so each device's gradient and AdamW step are its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from client.device_data import DeviceData
from client.trainers.base import (AdapterSet, DeviceTask, PeftAdapters, Trainer, TrainResult, batch_indices,
                                  loss_metrics, model_device, stacked_batch)
from models.loss import train_loss
from protocol.work import Work


def backprop_step(model, optimizer, x: torch.Tensor, y: torch.Tensor, groups: int = 1,
                  before_step: Callable[[], None] | None = None, forward=None) -> torch.Tensor:
    """One AdamW step on the adapters: each of the ``groups`` devices' mean next-token loss, the backward of
    their sum, the step. Returns the devices' losses (detached, no host sync). The benchmarks time this same
    function; ``before_step`` runs between backward and step (FedSpine reads the gradients there); ``forward``:
    the logits of a batch (default: ``model``'s own forward)."""
    logits = forward(x) if forward is not None else model(input_ids=x).logits
    loss = train_loss(logits, y, groups)
    optimizer.zero_grad(set_to_none=True)
    loss.sum().backward()
    if before_step is not None:
        before_step()
    optimizer.step()
    return loss.detach()


def train_lora(adapters: AdapterSet, data: Sequence[DeviceData], works: Sequence[Work]) -> list[TrainResult]:
    """A round of AdamW steps for the K devices of ``adapters`` (same steps, batch size and lr); one result each."""
    k, w0 = adapters.count, works[0]
    optimizer = torch.optim.AdamW(adapters.parameters(), lr=w0.lr, weight_decay=0.0)
    batches = [batch_indices(len(d.train_inputs), w.batch_size, w.local_steps, w.seed) for d, w in zip(data, works)]
    device = model_device(adapters.model)
    adapters.model.train()
    losses = []
    start = time.perf_counter()
    for step in range(w0.local_steps):
        x, y = stacked_batch(data, batches, step, device)
        losses.append(backprop_step(adapters.model, optimizer, x, y, k, forward=adapters.logits))
    compute_s = time.perf_counter() - start
    adapters.model.eval()
    per_step = torch.stack(losses).tolist()  # steps x devices
    extra = {"batched_devices": float(k)} if k > 1 else {}
    # compute_s: the device's share of the batched step (cost.clock=analytic does not read it)
    return [TrainResult(adapter=adapter, num_examples=len(d.train_inputs),
                        metrics={**loss_metrics([row[i] for row in per_step]), "compute_s": compute_s / k, **extra})
            for i, (adapter, d) in enumerate(zip(adapters.arrays(), data))]


class LoraBackpropTrainer(Trainer):
    name = "lora_backprop"

    def batch_key(self, work: Work, settings) -> tuple | None:
        return (work.rank, work.local_steps, work.batch_size, work.lr)

    def train(self, model, data: DeviceData, work: Work) -> TrainResult:
        """One device on a PEFT model (its adapter loaded)."""
        return train_lora(PeftAdapters(model), [data], [work])[0]

    def train_devices(self, runtime, tasks: Sequence[DeviceTask]) -> list[TrainResult]:
        if len(tasks) == 1:
            return super().train_devices(runtime, tasks)
        from client.multi_adapter import dense_multi_lora

        holder = dense_multi_lora(runtime, tasks[0].work.rank).load([t.received for t in tasks])
        try:
            return train_lora(holder, [runtime.device_data(t.work.device_index) for t in tasks],
                              [t.work for t in tasks])
        finally:
            holder.release()
