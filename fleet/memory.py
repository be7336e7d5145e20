"""Training-memory model: will a piece of work fit a device? (Work that does not fit is never sent.)

Counts the frozen base weights at ``model.param_bytes`` each, the trainable parameters in fp32 with their
gradient and two AdamW moments, and the activations kept for backprop (per layer about 34*h + 5*a*s values
per token, Korthikanti et al. 2022, plus the logits), at 2 bytes per activation value.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    num_params: int
    hidden_size: int
    num_layers: int
    num_heads: int
    vocab_size: int

    @classmethod
    def of(cls, model) -> ModelShape:
        c = model.config
        return cls(
            num_params=sum(p.numel() for p in model.parameters()),
            hidden_size=c.hidden_size,
            num_layers=c.num_hidden_layers,
            num_heads=c.num_attention_heads,
            vocab_size=c.vocab_size,
        )


def training_bytes(
    shape: ModelShape, trainable_params: int, batch_size: int, seq_len: int, param_bytes: int, backprop: bool = True
) -> int:
    weights = shape.num_params * param_bytes
    if not backprop:  # forward-only (zeroth-order) training: no gradients, moments or stored activations
        return int(weights + trainable_params * 4 + batch_size * seq_len * (shape.hidden_size * 8 + shape.vocab_size * 4))
    optimizer = trainable_params * 4 * 4  # weight, grad, exp_avg, exp_avg_sq
    tokens = batch_size * seq_len
    per_layer = tokens * (34 * shape.hidden_size + 5 * shape.num_heads * seq_len) * 2
    logits = tokens * shape.vocab_size * 4 * 2
    return int(weights + optimizer + shape.num_layers * per_layer + logits)
