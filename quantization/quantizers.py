"""Asymmetric uniform quantizers.

Weights: per output channel or per group of ``group_size`` input weights, range ``[clip_lo*min, clip_hi*max]``
where the clipping factors are learnable (OmniQuant's LWC: factors in (0, 1] via a sigmoid of a logit).
Activations: per token (one range per row of the last dim), computed on the fly.
Fake quantization returns ``(round(w/scale) + zero).clamp(0, 2^b-1) - zero) * scale`` in float.
"""

from __future__ import annotations

import torch


def grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """(out, in) -> (out, groups, group_size); group_size 0 means one group per row. When ``in`` is not a
    multiple of the group size the last group is zero-padded (zeros never widen a range that holds 0)."""
    out_f, in_f = w.shape
    g = group_size or in_f
    pad = (-in_f) % g
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    return w.reshape(out_f, (in_f + pad) // g, g)


def ungrouped(wg: torch.Tensor, in_features: int) -> torch.Tensor:
    return wg.reshape(wg.shape[0], -1)[:, :in_features]


def weight_qparams(
    wg: torch.Tensor, bits: int, clip_hi: torch.Tensor | float = 1.0, clip_lo: torch.Tensor | float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and (float) zero point per group of ``wg`` (out, groups, g): shapes (out, groups, 1)."""
    qmax = 2**bits - 1
    hi = wg.amax(dim=-1, keepdim=True).clamp(min=0) * clip_hi
    lo = wg.amin(dim=-1, keepdim=True).clamp(max=0) * clip_lo
    scale = ((hi - lo) / qmax).clamp(min=1e-8)
    zero = torch.round(-lo / scale)
    return scale, zero


def quantize_grouped(wg: torch.Tensor, bits: int, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Integer codes in [0, 2^b-1] (uint8)."""
    return (torch.round(wg / scale) + zero).clamp(0, 2**bits - 1).to(torch.uint8)


def dequantize_grouped(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (q.to(scale.dtype) - zero) * scale


def fake_quant_weight(
    w: torch.Tensor, bits: int, group_size: int, clip_hi: torch.Tensor | float = 1.0, clip_lo: torch.Tensor | float = 1.0
) -> torch.Tensor:
    """Quantize-dequantize ``w`` (out, in) group-wise; the result has ``w``'s shape and dtype."""
    wg = grouped(w, group_size)
    scale, zero = weight_qparams(wg, bits, clip_hi, clip_lo)
    q = (torch.round(wg / scale) + zero).clamp(0, 2**bits - 1)
    return ungrouped((q - zero) * scale, w.shape[1])


def fake_quant_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric per-token fake quantization over the last dim (no-op for bits >= 16)."""
    if bits >= 16:
        return x
    qmax = 2**bits - 1
    hi = x.amax(dim=-1, keepdim=True).clamp(min=0)
    lo = x.amin(dim=-1, keepdim=True).clamp(max=0)
    scale = ((hi - lo) / qmax).clamp(min=1e-8)
    zero = torch.round(-lo / scale)
    if torch.is_grad_enabled() and x.requires_grad:
        # Straight-through estimator: the forward is quantized, the backward is the identity (round's gradient
        # is 0 everywhere, so without it backprop QAT would stop at every quantized layer's input).
        q = ((torch.round(x.detach() / scale.detach()) + zero.detach()).clamp(0, qmax) - zero.detach()) * scale.detach()
        return q + (x - x.detach())  # value exactly q, gradient 1
    # Forward-only (ZeroQAT, evaluation): the same operations on one buffer, in place; 4x faster in fp32 on a CPU
    return (x / scale).round_().add_(zero).clamp_(0, qmax).sub_(zero).mul_(scale)


def smoothing_scales(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel s_j = max|X_j|^a / max|W_:j|^(1-a): X/s is easier to quantize, W*s absorbs it."""
    w_max = weight.abs().amax(dim=0).clamp(min=1e-5)
    s = act_absmax.clamp(min=1e-5).pow(alpha) / w_max.pow(1 - alpha)
    return s.clamp(min=1e-5)


def best_clipping(w: torch.Tensor, bits: int, group_size: int, grid: int = 10, low: float = 0.6) -> torch.Tensor:
    """Per-group clipping factor (out, groups, 1) from a grid in [low, 1] minimising the weight reconstruction
    error: the starting point of the learnable bounds (RTN is factor 1 everywhere)."""
    wg = grouped(w, group_size)
    best_err = torch.full(wg.shape[:2] + (1,), float("inf"), dtype=wg.dtype, device=wg.device)
    best = torch.ones_like(best_err)
    for r in torch.linspace(low, 1.0, grid).tolist():
        scale, zero = weight_qparams(wg, bits, r, r)
        err = (dequantize_grouped(quantize_grouped(wg, bits, scale, zero), scale, zero) - wg).pow(2).sum(-1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, r), best)
    return best
