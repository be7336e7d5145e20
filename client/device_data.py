"""One device's training and test windows, as tensors: what every trainer trains on.

Its own module, importing nothing of the project, so that the trainers (client/trainers/) and the runtime that
builds it (client/runtime.py) both import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DeviceData:
    train_inputs: torch.Tensor
    train_labels: torch.Tensor
    test_inputs: torch.Tensor
    test_labels: torch.Tensor

    def to_model(self, model: torch.nn.Module) -> DeviceData:
        """The same data on the model's device (the GPU for the runtime's model, the CPU for a trainer's own)."""
        device = next(model.parameters()).device
        return DeviceData(*(t.to(device) for t in (self.train_inputs, self.train_labels, self.test_inputs,
                                                   self.test_labels)))
