"""Backpropagation LoRA fine-tuning (AdamW on the adapter only; the base stays frozen)."""

from __future__ import annotations

import time

import torch

from client.device_data import DeviceData
from client.trainers.base import TrainResult, batch_indices, loss_metrics
from models.evaluation import next_token_stats
from models.lora import adapter_arrays
from protocol.work import Work


def backprop_step(model, optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """One AdamW step on the adapter: mean next-token loss, backward, step. Returns the loss (the trainer's step;
    the benchmarks time this same function)."""
    loss_sum, _, tokens = next_token_stats(model(input_ids=x).logits, y)
    loss = loss_sum / max(tokens, 1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


class LoraBackpropTrainer:
    name = "lora_backprop"

    def train(self, model, data: DeviceData, work: Work) -> TrainResult:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=work.lr, weight_decay=0.0)
        model.train()
        losses = []
        start = time.perf_counter()
        for idx in batch_indices(len(data.train_inputs), work.batch_size, work.local_steps, work.seed):
            losses.append(backprop_step(model, optimizer, data.train_inputs[idx], data.train_labels[idx]))
        compute_s = time.perf_counter() - start
        model.eval()
        return TrainResult(
            adapter=adapter_arrays(model),
            num_examples=len(data.train_inputs),
            metrics={**loss_metrics(losses), "train_loss": sum(losses) / len(losses), "compute_s": compute_s},
        )
