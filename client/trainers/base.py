"""The one interface every local trainer implements: ``train(model, data, work) -> TrainResult``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

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


class Trainer(Protocol):
    name: str

    def train(self, model, data: DeviceData, work: Work) -> TrainResult: ...


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
