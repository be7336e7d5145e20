"""Quantize the linear layers of a LLaMA-family model in place (plain or PEFT-LoRA-wrapped).

Calibration (on public text, as a server would before shipping a pre-quantized base): per-input-channel
activation abs-max for SmoothQuant scales, and a per-group clipping grid search for the weight ranges.
Without calibration data and with ``clipping=False`` this is round-to-nearest (RTN) PTQ.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from quantization.layers import FakeQuantLinear, PackedLinear
from quantization.quantizers import best_clipping, smoothing_scales
from quantization.spec import QuantSpec

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def target_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear, str, str]]:
    """(parent, attribute, linear, projection name, module path) for each decoder projection; a LoRA wrapper's
    ``base_layer`` counts as its projection. Embeddings, the LM head and LoRA factors stay as they are."""
    found = []
    for path, parent in model.named_modules():
        for attr, child in parent.named_children():
            if type(child) is not nn.Linear:
                continue
            if attr in LINEAR_NAMES:
                found.append((parent, attr, child, attr, f"{path}.{attr}"))
            elif attr == "base_layer" and path.rsplit(".", 1)[-1] in LINEAR_NAMES:
                found.append((parent, attr, child, path.rsplit(".", 1)[-1], f"{path}.{attr}"))
    return found


@torch.no_grad()
def activation_absmax(model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-input-channel max |x| seen by each target linear over the calibration batches."""
    stats: dict[str, torch.Tensor] = {}
    hooks = []
    for _, _, linear, _, path in target_linears(model):
        def hook(mod, inputs, output, path=path):
            amax = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(dim=0).float()
            stats[path] = torch.maximum(stats[path], amax) if path in stats else amax
        hooks.append(linear.register_forward_hook(hook))
    try:
        for x in batches:
            model(input_ids=x)
    finally:
        for h in hooks:
            h.remove()
    return stats


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    spec: QuantSpec,
    calibration: Iterable[torch.Tensor] | None = None,
    smoothing_alpha: float | None = 0.5,
    clipping: bool = True,
    float_trainable: Iterable[str] = (),
    trainable_qparams: bool = False,
) -> nn.Module:
    """Replace every decoder projection by a :class:`PackedLinear` (frozen, packed) or, for projection names in
    ``float_trainable``, a :class:`FakeQuantLinear` (full-precision master weight, fake-quantized)."""
    float_trainable = set(float_trainable)
    absmax = activation_absmax(model, calibration) if calibration is not None and smoothing_alpha else {}
    for parent, attr, linear, proj, path in target_linears(model):
        smooth = smoothing_scales(absmax[path], linear.weight.float(), smoothing_alpha) if path in absmax else None
        w = linear.weight.float() * (smooth if smooth is not None else 1.0)
        clip = best_clipping(w, spec.w_bits, spec.group_size) if clipping else 1.0
        if proj in float_trainable:
            new = FakeQuantLinear(linear, spec.w_bits, spec.group_size, spec.a_bits, smooth, clip)
        else:
            new = PackedLinear(linear, spec.w_bits, spec.group_size, spec.a_bits, smooth, clip, trainable_qparams)
        setattr(parent, attr, new)
    return model
