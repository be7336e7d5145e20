"""Local trainers by name (``client.trainer`` / a device class's ``trainer``)."""

from __future__ import annotations

from client.trainers.base import Trainer, TrainResult
from client.trainers.fedspine_prune import FedSpinePruneTrainer
from client.trainers.lora_backprop import LoraBackpropTrainer
from client.trainers.zeroqat import ZeroQATTrainer
from client.trainers.lora_dpsgd import LoraDpSgdTrainer

TRAINERS: dict[str, type] = {LoraBackpropTrainer.name: LoraBackpropTrainer}
TRAINERS["lora_dpsgd"] = LoraDpSgdTrainer  # record-level DP-SGD (privacy.record.enabled)
TRAINERS[ZeroQATTrainer.name] = ZeroQATTrainer
TRAINERS[FedSpinePruneTrainer.name] = FedSpinePruneTrainer


def get_trainer(name: str) -> Trainer:
    if name not in TRAINERS:
        raise ValueError(f"unknown trainer '{name}'; known: {', '.join(sorted(TRAINERS))}")
    return TRAINERS[name]()


__all__ = ["TRAINERS", "Trainer", "TrainResult", "get_trainer"]
