"""The phone's model: the frozen base pre-quantized (packed) with a trainable set for ZO steps.

Built once per process from the cached base checkpoint and calibrated on public-split windows (what a server
would do before shipping a quantized base), then reused for every round and device (adapters are reloaded).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.lora import attach_lora
from quantization.convert import quantize_model
from quantization.layers import FakeQuantLinear, PackedLinear
from quantization.spec import parse_wa
from runconfig.schema import LoraConfig, ZeroQATConfig


def calibration_batches(windows: torch.Tensor, count: int, batch_size: int = 8) -> list[torch.Tensor]:
    x = windows[:count]
    return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]


def build_quantized(base: nn.Module, cfg: ZeroQATConfig, calibration: Sequence[torch.Tensor] | None,
                    lora: LoraConfig | None = None, seed: int = 0, rank: int | None = None) -> nn.Module:
    """Quantize ``base`` in place per ``cfg``; with ``cfg.trainable == 'lora'`` wrap it with a PEFT adapter first
    (same config and seed as the fleet's, so adapter keys match everyone else's)."""
    spec = parse_wa(cfg.quant, cfg.group_size)
    model = base
    if cfg.trainable == "lora":
        if lora is None:
            raise ValueError("trainable=lora needs the fleet's LoRA config")
        model = attach_lora(base, lora, seed, rank)
    quantize_model(
        model, spec, calibration=calibration, smoothing_alpha=cfg.smoothing_alpha or None, clipping=cfg.clipping,
        float_trainable=("q_proj", "v_proj") if cfg.trainable == "qv" else (),
        trainable_qparams=cfg.trainable == "qparams",
    )
    for p in model.parameters():
        p.requires_grad_(False)  # ZO never needs autograd; the trainable set is chosen by name below
    model.eval()
    return model


def trainable_tensors(model: nn.Module, trainable: str) -> dict[str, torch.Tensor]:
    """Name -> tensor of the ZO-trained set, in a fixed order (sorted names: the order z is drawn in).

    lora: PEFT's LoRA factors, keyed like ``get_peft_model_state_dict`` (the adapter's keys);
    qv: the q_proj/v_proj master weights and their clipping bounds; qparams: scale gains and zero shifts."""
    out: dict[str, torch.Tensor] = {}
    if trainable == "lora":
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                out[name.replace(".default", "")] = p.data
    elif trainable == "qv":
        for name, m in model.named_modules():
            if isinstance(m, FakeQuantLinear):
                out.update({f"{name}.weight": m.weight.data, f"{name}.clip_hi": m.clip_hi.data,
                            f"{name}.clip_lo": m.clip_lo.data})
    elif trainable == "qparams":
        for name, m in model.named_modules():
            if isinstance(m, PackedLinear) and m.scale_gain is not None:
                out.update({f"{name}.scale_gain": m.scale_gain.data, f"{name}.zero_shift": m.zero_shift.data})
    else:
        raise ValueError(f"zeroqat.trainable: unknown '{trainable}'")
    if not out:
        raise ValueError(f"zeroqat.trainable={trainable}: the model has no such tensors")
    return {k: out[k] for k in sorted(out)}
