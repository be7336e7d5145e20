"""Physically shrink a dense LLaMA-family model to a :class:`Structure` (smaller matrices, updated config).

After pruning, the model is an ordinary ``*ForCausalLM`` of a smaller config (fewer heads per KV group or fewer
KV groups, smaller ``intermediate_size``; ``head_dim`` pinned): it runs, generates, saves/loads and takes PEFT
LoRA adapters like any other model.
"""

from __future__ import annotations

import torch
from torch import nn

from pruning.structure import Dims, Structure


def _like(linear: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    """An uninitialised linear on the original's device and in its dtype (no CPU/fp32 round trip)."""
    w = linear.weight
    return nn.Linear(in_features, out_features, bias=linear.bias is not None, device=w.device, dtype=w.dtype)


def _rows(linear: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = _like(linear, linear.in_features, len(idx))
    idx = idx.to(linear.weight.device)
    with torch.no_grad():
        new.weight.copy_(linear.weight[idx])
        if linear.bias is not None:
            new.bias.copy_(linear.bias[idx])
    new.requires_grad_(linear.weight.requires_grad)
    return new


def _cols(linear: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = _like(linear, len(idx), linear.out_features)
    idx = idx.to(linear.weight.device)
    with torch.no_grad():
        new.weight.copy_(linear.weight[:, idx])
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    new.requires_grad_(linear.weight.requires_grad)
    return new


def decoder_layers(model) -> nn.ModuleList:
    """The decoder layers of a ``*ForCausalLM`` (or a PEFT wrapper of one)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model.layers


def prune_model(model, structure: Structure, dims: Dims) -> None:
    """Prune a *dense* model in place to ``structure`` (q/k/v/o per head group, gate/up/down per channel)."""
    structure.check(dims)
    d = dims.head_dim
    for layer_idx, layer in enumerate(decoder_layers(model)):
        attn, mlp = layer.self_attn, layer.mlp
        heads = torch.from_numpy(structure.heads[layer_idx].nonzero()[0])
        groups = torch.from_numpy(structure.groups(layer_idx, dims).nonzero()[0])
        head_rows = (heads[:, None] * d + torch.arange(d)).reshape(-1)
        group_rows = (groups[:, None] * d + torch.arange(d)).reshape(-1)
        channels = torch.from_numpy(structure.channels[layer_idx].nonzero()[0])
        attn.q_proj = _rows(attn.q_proj, head_rows)
        attn.k_proj = _rows(attn.k_proj, group_rows)
        attn.v_proj = _rows(attn.v_proj, group_rows)
        attn.o_proj = _cols(attn.o_proj, head_rows)
        attn.num_key_value_groups = len(heads) // len(groups)
        attn.head_dim = d
        mlp.gate_proj = _rows(mlp.gate_proj, channels)
        mlp.up_proj = _rows(mlp.up_proj, channels)
        mlp.down_proj = _cols(mlp.down_proj, channels)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(channels)
    config = model.config
    config.head_dim = d
    config.num_attention_heads = structure.kept_heads()
    config.num_key_value_heads = structure.kept_groups(dims)
    config.intermediate_size = structure.kept_channels()


def zero_pruned(model, structure: Structure, dims: Dims) -> None:
    """Zero, in a dense model, the weights a structure removes (for equivalence tests: same function)."""
    d = dims.head_dim
    with torch.no_grad():
        for layer_idx, layer in enumerate(decoder_layers(model)):
            drop_h = torch.from_numpy((~structure.heads[layer_idx]).nonzero()[0])
            rows = (drop_h[:, None] * d + torch.arange(d)).reshape(-1)
            layer.self_attn.o_proj.weight[:, rows] = 0.0  # a removed head contributes nothing to the output
            drop_c = torch.from_numpy((~structure.channels[layer_idx]).nonzero()[0])
            layer.mlp.down_proj.weight[:, drop_c] = 0.0


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
