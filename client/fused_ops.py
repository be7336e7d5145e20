"""Memory-lean forward/backward pairs for the batched multi-adapter step (client/multi_adapter.py) on a CPU.

A batched step's time on a CPU is mostly element-wise passes over activations too large for the cache, not
matmuls (docs/benchmarks/throughput.md). Autograd's generic backward of an RMSNorm or of a cross-entropy over
fp32 logits makes several such passes and keeps extra copies; the hand-written backward passes here make fewer,
with the same math (results differ only by floating-point reassociation; tests/test_throughput.py compares them
with autograd's). Only the frozen-weight cases the batched step needs are covered. The loss's fused
cross-entropy is models/loss.py's.
"""

from __future__ import annotations

import torch
from torch import nn

from client.device_detect import no_autocast


class _FrozenRMSNorm(torch.autograd.Function):
    """``weight * (x * rsqrt(mean(x^2) + eps))`` with a frozen weight: the input's gradient only, in one fused
    expression ``rstd * (g*w - x_hat * mean(g*w * x_hat))``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        gw = (grad * weight).float()
        x_hat = x.float() * rstd
        dot = (gw * x_hat).mean(-1, keepdim=True)
        return gw.sub_(x_hat.mul_(dot)).mul_(rstd).to(x.dtype), None, None


class FrozenRMSNorm(nn.Module):
    """Drop-in for the Llama-family RMSNorm (``weight * normalize(x.float()).to(x.dtype)``) whose weight is
    frozen, with :class:`_FrozenRMSNorm`'s backward."""

    def __init__(self, weight: nn.Parameter, eps: float) -> None:
        super().__init__()
        self.weight = weight
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.requires_grad:
            raise RuntimeError("FrozenRMSNorm computes no weight gradient; its weight must be frozen")
        return _FrozenRMSNorm.apply(x, self.weight, self.eps)


def llama_rms_norm_classes() -> tuple[type, ...]:
    """transformers' RMSNorm classes with exactly this forward (Llama, Mistral, Qwen2/3); Gemma's (1 + w) differs."""
    import importlib

    classes = []
    for module, name in (("llama", "LlamaRMSNorm"), ("mistral", "MistralRMSNorm"), ("qwen2", "Qwen2RMSNorm"),
                         ("qwen3", "Qwen3RMSNorm")):
        try:
            classes.append(getattr(importlib.import_module(f"transformers.models.{module}.modeling_{module}"), name))
        except (ImportError, AttributeError):
            continue
    return tuple(classes)


def use_frozen_rms_norms(model: nn.Module) -> int:
    """Replace the model's (frozen) Llama-family RMSNorms by :class:`FrozenRMSNorm`; returns how many."""
    classes = llama_rms_norm_classes()
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) in classes and not child.weight.requires_grad:
                setattr(module, name, FrozenRMSNorm(child.weight, float(child.variance_epsilon)))
                swapped += 1
    return swapped


def add_multi_lora(out: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
                   scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``out += s * B_k (A_k x)`` for K equal contiguous groups of rows, in one pass over ``out`` (no separate
    scale and add passes, no copy); also returns the [K, T, r] ``A_k x``. ``out`` must be contiguous. Operands
    meet in ``x``'s, then ``out``'s dtype (what autocast casts them to anyway; without autocast: a base held in
    bf16 next to fp32 adapters)."""
    k = lora_a.shape[0]
    down = torch.bmm(x.reshape(k, -1, x.shape[-1]), lora_a.to(x.dtype).transpose(1, 2))
    # in place: ``out`` is a fresh product no backward needs (an out-of-place baddbmm first copies all of it);
    # ``view``, not ``reshape``: a copy of a non-contiguous ``out`` would take the update and be dropped
    out.view(k, -1, out.shape[-1]).baddbmm_(down.to(out.dtype), lora_b.to(out.dtype).transpose(1, 2),
                                              alpha=scaling)
    return out, down


class _MultiLoraLinear(torch.autograd.Function):
    """``W x + s * B_k (A_k x)`` for K equal groups of rows (device k's adapter on its rows), frozen W.

    Autograd's backward of the same expression adds the base's and the adapter's input gradients in a separate
    pass and casts each adapter gradient through extra nodes; here the input gradient is one ``baddbmm`` onto
    ``g W`` and the scaling is applied to the small [K, T, r] factors."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
        with no_autocast(x.device.type):  # x already in the compute dtype
            w = weight.to(x.dtype)
            a, b = lora_a.to(x.dtype), lora_b.to(x.dtype)
            out, down = add_multi_lora(nn.functional.linear(x, w, None if bias is None else bias.to(x.dtype)),
                                       x, a, b, scaling)
        ctx.save_for_backward(x, w, a, b, down)
        ctx.scaling = scaling
        ctx.adapter_dtypes = (lora_a.dtype, lora_b.dtype)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w, a, b, down = ctx.saved_tensors
        k, s = a.shape[0], ctx.scaling
        gk = grad.to(x.dtype).reshape(k, -1, grad.shape[-1])
        xk = x.reshape(k, -1, x.shape[-1])
        g_down = torch.bmm(gk, b * s)  # [K, T, r]
        grad_b = torch.bmm(gk.transpose(1, 2), down * s).to(ctx.adapter_dtypes[1])  # [K, out, r]
        grad_a = torch.bmm(g_down.transpose(1, 2), xk).to(ctx.adapter_dtypes[0])  # [K, r, in]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(gk.reshape(-1, gk.shape[-1]), w)
            grad_x.view(k, -1, w.shape[1]).baddbmm_(g_down, a)
            grad_x = grad_x.view(x.shape)
        return grad_x, None, None, grad_a, grad_b, None


def multi_lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                      lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """Rows of ``x`` in K equal contiguous groups; ``lora_a`` [K, r, in], ``lora_b`` [K, out, r]; frozen weight."""
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise RuntimeError("multi_lora_linear computes no base-weight gradient; the base layer must be frozen")
    return _MultiLoraLinear.apply(x, weight, bias, lora_a, lora_b, scaling)


class SharedCast:
    """One cast of a tensor for every layer that reads it (q, k and v read the same normed input): the first
    caller casts, the next callers with the same tensor get the same cast (its gradients are summed once)."""

    def __init__(self) -> None:
        self._source: torch.Tensor | None = None
        self._version = -1
        self._cast: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if x.dtype == dtype:
            return x
        if torch.compiler.is_compiling():  # a compiled region casts once by itself (and cannot keep Python state)
            return x.to(dtype)
        if self._source is not x or self._version != x._version or self._cast.dtype != dtype:
            self._source, self._version, self._cast = x, x._version, x.to(dtype)
        return self._cast

    def clear(self) -> None:
        self._source = self._cast = None
