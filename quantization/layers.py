"""Quantized replacements for ``nn.Linear`` in LLaMA-family blocks.

Both take smoothed, per-token-quantized activations: ``y = Q_a(x / s) @ Q_w(W * s)^T + b`` (SmoothQuant's
migration of activation outliers into the weights; ``s`` would be folded into the preceding norm on device).

* :class:`PackedLinear` -- frozen base weight stored packed (b-bit codes in uint8 + fp16 scale/zero per group),
  dequantized one layer at a time in ``forward``. Optionally trainable quantization parameters (a log-gain on
  each scale and a shift of each zero point, both starting at 0).
* :class:`FakeQuantLinear` -- a full-precision master weight that is fake-quantized on every forward, with
  learnable clipping factors: the trainable q_proj/v_proj of ZeroQAT's lightweight variant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantization import packing
from quantization.quantizers import (fake_quant_activation, fake_quant_weight, grouped, quantize_grouped, ungrouped,
                                     weight_qparams)


class _DequantMatmul(torch.autograd.Function):
    """x @ W^T with W re-dequantized in backward (nothing but a module reference is saved, like QLoRA's kernels):
    gradients flow to x only, the packed base is frozen."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return F.linear(x, layer.dequantized())

    @staticmethod
    def backward(ctx, grad):
        return grad @ ctx.layer.dequantized(), None


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear, bits: int, group_size: int, a_bits: int,
                 smooth: torch.Tensor | None = None, clip: torch.Tensor | float = 1.0,
                 trainable_qparams: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits, self.group_size, self.a_bits = bits, group_size, a_bits
        with torch.no_grad():
            w = linear.weight.detach().float()
            if smooth is not None:
                w = w * smooth
            wg = grouped(w, group_size)
            scale, zero = weight_qparams(wg, bits, clip, clip)
            codes = quantize_grouped(wg, bits, scale, zero)
        self.register_buffer("packed", packing.pack(codes, bits))
        self.register_buffer("scale", scale.half())
        self.register_buffer("zero", zero.half())
        self.register_buffer("smooth", None if smooth is None else smooth.float().clone())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.scale_gain = nn.Parameter(torch.zeros_like(scale, dtype=torch.float32)) if trainable_qparams else None
        self.zero_shift = nn.Parameter(torch.zeros_like(zero, dtype=torch.float32)) if trainable_qparams else None
        self._held: torch.Tensor | None = None  # hold_dequantized()

    def hold_dequantized(self, dtype: torch.dtype | None = None) -> None:
        """Keep the dequantized weight (in ``dtype``: the matmul's autocast dtype, or fp32) for every later forward.

        A simulation host's speed-up, for frozen quantization parameters (ZeroQAT training LoRA): each forward
        would unpack the same weight again. The forward's result is unchanged (autocast casts the dequantized
        weight to the same dtype); a device keeps only the packed form, and the cost model prices that.
        """
        if self.scale_gain is not None:
            raise ValueError("hold_dequantized needs frozen quantization parameters (trainable_qparams=False)")
        with torch.no_grad():
            self._held = self.dequantized().to(dtype or torch.float32)

    def dequantized(self) -> torch.Tensor:
        if self._held is not None:
            return self._held
        groups = self.scale.shape[1]
        padded_in = self.in_features + (-self.in_features) % (self.in_features if not self.group_size else self.group_size)
        codes = packing.unpack(self.packed, self.bits, self.out_features * padded_in)
        scale, zero = self.scale.float(), self.zero.float()
        if self.scale_gain is not None:
            scale = scale * torch.exp(self.scale_gain)
            zero = zero + self.zero_shift
        codes = codes.reshape(self.out_features, groups, -1)
        return ungrouped((codes.float() - zero) * scale, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:
            x = x / self.smooth
        x = fake_quant_activation(x, self.a_bits)
        if torch.is_grad_enabled() and x.requires_grad and self.scale_gain is None:
            y = _DequantMatmul.apply(x, self)
        else:
            y = F.linear(x, self.dequantized())
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, W{self.bits}A{self.a_bits}, group={self.group_size}"


class FakeQuantLinear(nn.Module):
    def __init__(self, linear: nn.Linear, bits: int, group_size: int, a_bits: int,
                 smooth: torch.Tensor | None = None, clip: torch.Tensor | float = 1.0) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits, self.group_size, self.a_bits = bits, group_size, a_bits
        w = linear.weight.detach().float().clone()
        if smooth is not None:
            w = w * smooth
        self.weight = nn.Parameter(w)  # master weight (already multiplied by the smoothing scales)
        groups = grouped(w, group_size).shape[:2] + (1,)
        clip_t = torch.as_tensor(clip, dtype=torch.float32, device=w.device).expand(groups).clone()
        self.clip_hi = nn.Parameter(clip_t.clone())  # learnable clipping bounds (fractions of max / min)
        self.clip_lo = nn.Parameter(clip_t.clone())
        self.register_buffer("smooth", None if smooth is None else smooth.float().clone())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:
            x = x / self.smooth
        x = fake_quant_activation(x, self.a_bits)
        w = fake_quant_weight(self.weight, self.bits, self.group_size,
                              self.clip_hi.clamp(0.3, 1.0), self.clip_lo.clamp(0.3, 1.0))
        y = F.linear(x, w)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, W{self.bits}A{self.a_bits} fake, group={self.group_size}"


def storage_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (what it really occupies in memory)."""
    tensors = list(module.parameters()) + [b for b in module.buffers() if b is not None]
    return sum(t.numel() * t.element_size() for t in tensors)
