"""LoRAPrune-style structured importance from the LoRA factors' gradients (Zhang et al., 2023).

The frozen base weight ``W`` gets no gradient. A gradient step on the LoRA factors changes the merged weight
by about ``-lr * (G_B A + B G_A)``, so ``G_W ~ G_B A + B G_A`` (both already computed by backprop of the
adapter). Element importance ``|(W + s B A) * G_W|`` (first-order Taylor estimate of the loss change when the
element is removed) is summed over each structure group -- a query head's rows of ``q_proj`` and columns of
``o_proj``, a channel's rows of ``gate_proj``/``up_proj`` and column of ``down_proj`` -- and smoothed over
local iterations by an exponential moving average.
"""

from __future__ import annotations

import numpy as np
import torch

from pruning.prune import decoder_layers
from pruning.structure import Dims, Structure


def _lora_taylor(module) -> torch.Tensor | None:
    """|(W + sBA) * (G_B A + B G_A)| for a PEFT LoRA Linear after backward, or None without gradients."""
    name = module.active_adapters[0]
    A, B = module.lora_A[name].weight, module.lora_B[name].weight
    if A.grad is None or B.grad is None:
        return None
    s = module.scaling[name]
    with torch.no_grad():
        grad_w = B.grad @ A + B @ A.grad
        merged = module.base_layer.weight + s * (B @ A)
        return (merged * grad_w).abs()


class ImportanceTracker:
    """EMA of per-head and per-channel importance over local iterations, in the sub-model's coordinates."""

    def __init__(self, beta: float = 0.9) -> None:
        self.beta = beta
        self.heads: list[np.ndarray] | None = None
        self.channels: list[np.ndarray] | None = None

    def update(self, peft_model) -> None:
        heads, channels = [], []
        for layer in decoder_layers(peft_model):
            attn, mlp = layer.self_attn, layer.mlp
            d = attn.head_dim
            h = 0.0
            for proj, axis in ((attn.q_proj, 1), (attn.o_proj, 0)):
                t = _lora_taylor(proj)
                if t is not None:  # q rows / o columns of each head
                    per_head = t.reshape(-1, d, t.shape[1]).sum((1, 2)) if axis == 1 else \
                        t.reshape(t.shape[0], -1, d).sum((0, 2))
                    h = h + per_head.double().cpu().numpy()
            c = 0.0
            for proj, axis in ((mlp.gate_proj, 1), (mlp.up_proj, 1), (mlp.down_proj, 0)):
                t = _lora_taylor(proj)
                if t is not None:
                    c = c + t.sum(axis).double().cpu().numpy()
            heads.append(np.asarray(h, float))
            channels.append(np.asarray(c, float))
        if self.heads is None:
            self.heads, self.channels = heads, channels
        else:
            b = self.beta
            self.heads = [b * o + (1 - b) * n for o, n in zip(self.heads, heads)]
            self.channels = [b * o + (1 - b) * n for o, n in zip(self.channels, channels)]

    def full_scores(self, structure: Structure, dims: Dims) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Scores spread to the dense model's heads/channels (removed ones score 0; :func:`select` skips them)."""
        if self.heads is None:
            raise RuntimeError("no importance yet: call update() after a backward pass")
        heads, channels = [], []
        for layer in range(dims.num_layers):
            h = np.zeros(dims.num_heads)
            h[structure.heads[layer]] = self.heads[layer]
            c = np.zeros(dims.intermediate_size)
            c[structure.channels[layer]] = self.channels[layer]
            heads.append(h)
            channels.append(c)
        return heads, channels


# ---------------------------------------------------------------------------------------------------------
# Public (data-free) importance: what a device may prune by under user-level DP (docs/privacy.md).
def weight_scores(dense_model, dims: Dims) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Squared weight norms of the *dense* base per query head (its rows of ``q_proj``, columns of ``o_proj``)
    and per MLP channel (its rows of ``gate_proj``/``up_proj``, column of ``down_proj``), in float64.

    The base is public (every party has it), so masks chosen by these scores reveal nothing about any device's
    data, and the server can recompute a device's masks exactly (:func:`public_structure`)."""
    heads, channels = [], []
    with torch.no_grad():
        for layer in decoder_layers(dense_model):
            attn, mlp = layer.self_attn, layer.mlp
            sq = lambda lin: lin.weight.detach().to("cpu", torch.float64).square()  # noqa: E731
            q, o = sq(attn.q_proj), sq(attn.o_proj)
            h = q.reshape(dims.num_heads, dims.head_dim, -1).sum((1, 2)) + \
                o.reshape(o.shape[0], dims.num_heads, dims.head_dim).sum((0, 2))
            c = sq(mlp.gate_proj).sum(1) + sq(mlp.up_proj).sum(1) + sq(mlp.down_proj).sum(0)
            heads.append(h.numpy())
            channels.append(c.numpy())
    return heads, channels


def public_structure(start: Structure, scores: tuple[list[np.ndarray], list[np.ndarray]], dims: Dims,
                     levels: list[float], head_rule: str) -> Structure:
    """The structure a device ends a round at when it prunes by public ``scores`` along ``levels`` (the
    round's schedule, pruning/schedule.step_levels): the same replay as the trainer's, on the server."""
    from pruning.structure import select

    structure, level = start, levels[0] if levels else 0.0
    for step in range(1, len(levels)):
        if levels[step] > level:
            level = levels[step]
            structure = select(scores[0], scores[1], structure, dims, level, head_rule)
    return structure
