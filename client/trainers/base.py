"""What every local trainer shares: its input (:class:`DeviceTask`), its output (:class:`TrainResult`), and the
K devices it trains at once (:class:`AdapterSet`).

A trainer is handed the tasks of K devices that share a base (same rank, steps, batch size: see
``Trainer.batch_key``) and returns one result per device. The Flower ClientApp (client/app.py) hands it one
device (K = 1, the PEFT model); the in-process engine's batching (simulations/batching.py) hands it K (the
multi-adapter model, client/multi_adapter.py). The training loop is the trainer's, the same for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from client.device_data import DeviceData
from protocol.work import Work


@dataclass
class TrainResult:
    adapter: dict[str, np.ndarray]  # the adapter after local training (same keys as received)
    num_examples: int  # training windows the device holds (FedAvg weight)
    metrics: dict[str, float] = field(default_factory=dict)  # train_loss, compute_s, ...
    upload: dict[str, np.ndarray] | None = None  # sent instead of the adapter delta when set (ZO seed uploads)
    # A trainer that reshapes the model (FedSpine) returns its sub-model's adapter with the arrays it is a
    # delta against (the received adapter in the same coordinates) and its kept-structure masks.
    reference: dict[str, np.ndarray] | None = None
    structure: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class DeviceTask:
    """One device's share of a trainer call: its work, the adapter it received, its kept structure (FedSpine)."""

    work: Work
    received: dict[str, np.ndarray]
    structure: dict[str, np.ndarray] = field(default_factory=dict)


class AdapterSet(Protocol):
    """K devices' adapters on one shared base: ``model``'s forward takes K equal groups of rows, device k's
    adapter acting on group k (K = 1: a PEFT model)."""

    model: torch.nn.Module
    count: int

    def logits(self, x: torch.Tensor) -> torch.Tensor: ...  # the forward of K equal groups of rows

    def parameters(self) -> list[torch.Tensor]: ...  # every device's trainable tensors (AdamW's)

    def per_device(self) -> list[list[torch.Tensor]]: ...  # device k's tensors, sorted by adapter key

    def arrays(self) -> list[dict[str, np.ndarray]]: ...  # device k's adapter (PEFT's keys)


class PeftAdapters:
    """One device's adapter as an :class:`AdapterSet`: a PEFT model (the runtime's or ZeroQAT's quantized one)."""

    count = 1

    def __init__(self, model) -> None:
        self.model = model

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=x).logits

    def parameters(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def per_device(self) -> list[list[torch.Tensor]]:
        from zeroqat.model import trainable_tensors

        return [list(trainable_tensors(self.model, "lora").values())]

    def arrays(self) -> list[dict[str, np.ndarray]]:
        from models.lora import adapter_arrays

        return [adapter_arrays(self.model)]


class Trainer:
    """A local trainer. ``train_devices`` trains K devices' tasks (one result each); by default it trains them
    one by one on the runtime's PEFT model with :meth:`train`. ``batch_key``: tasks with the same key may share
    one call with K > 1 (None: never)."""

    name = ""

    def batch_key(self, work: Work, settings) -> tuple | None:
        return None

    def train(self, model, data: DeviceData, work: Work) -> TrainResult:
        raise NotImplementedError

    def train_devices(self, runtime, tasks: Sequence[DeviceTask]) -> list[TrainResult]:
        return train_one_by_one(self, runtime, tasks)


def train_one_by_one(trainer, runtime, tasks: Sequence[DeviceTask]) -> list[TrainResult]:
    """``trainer.train(model, data, work)`` for each task, on the runtime's PEFT model with the task's adapter."""
    from models.lora import load_adapter_arrays

    results = []
    for task in tasks:
        model = runtime.adapter_model(task.work.rank)
        load_adapter_arrays(model, task.received)
        results.append(trainer.train(model, runtime.device_data(task.work.device_index).to_model(model), task.work))
    return results


def run_tasks(trainer, runtime, tasks: Sequence[DeviceTask]) -> list[TrainResult]:
    """Train the tasks under the runtime's mixed precision: what both engines call. A trainer outside this
    hierarchy (one with only ``train(model, data, work)``) trains them one by one."""
    with runtime.autocast():
        if isinstance(trainer, Trainer):
            return trainer.train_devices(runtime, tasks)
        return train_one_by_one(trainer, runtime, tasks)


def stacked_batch(data: Sequence[DeviceData], batches: Sequence[list[np.ndarray]], step: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s windows of every device, stacked in device order (K equal groups of rows)."""
    x = torch.cat([d.train_inputs[b[step]] for d, b in zip(data, batches)]).to(device)
    y = torch.cat([d.train_labels[b[step]] for d, b in zip(data, batches)]).to(device)
    return x, y


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def loss_metrics(losses: list[float]) -> dict[str, float]:
    """The round's mean loss and its first and last quarter's (``loss_start``, ``loss_end``): the server
    rejects a reply whose local training diverged (validation.max_loss_rise)."""
    k = max(1, len(losses) // 4)
    if not losses:
        return {"train_loss": 0.0}
    return {"train_loss": float(np.mean(losses)), "loss_start": float(np.mean(losses[:k])),
            "loss_end": float(np.mean(losses[-k:]))}


def batch_indices(num_windows: int, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    """Seeded batches that sweep the device's windows in shuffled epochs (no window skipped before a repeat)."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < batch_size * steps:
        order.extend(rng.permutation(num_windows).tolist())
    return [np.asarray(order[i * batch_size : (i + 1) * batch_size]) for i in range(steps)]
