"""SPSA / MeZO zeroth-order steps with in-place perturbations regenerated from seeds.

For trainable tensors theta and a seed s, z ~ N(0, I) is drawn tensor by tensor from ``torch.Generator(s)``
(never stored). One estimate: g = [L(theta + eps z) - L(theta - eps z)] / (2 eps), a scalar; the step is
theta <- theta - lr * g * z. With q directions per step the step is the mean of q such terms.
E[g z] = grad L + O(eps^2), so the update is an unbiased-in-the-limit gradient step that needs only two
forward passes and no autograd graph (everything runs under ``torch.no_grad``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch


def noise(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """z drawn on the CPU whatever device trains: a seed means the same z on a phone, a Jetson's GPU and the
    server that replays it (CUDA's generator draws different numbers); callers move it to their tensors."""
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def direction(params: Sequence[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """z(seed), one tensor per parameter, on each parameter's device and in its dtype (the order of ``params``
    is part of the seed's meaning)."""
    gen = torch.Generator().manual_seed(int(seed))  # CPU: see noise()
    return [noise(p.shape, gen).to(device=p.device, dtype=p.dtype) for p in params]


@torch.no_grad()
def add_direction(params: Sequence[torch.Tensor], seed: int | Sequence[torch.Tensor], alpha: float) -> None:
    """params += alpha * z, for z = z(seed) or an already drawn :func:`direction` (the same numbers)."""
    z = direction(params, seed) if isinstance(seed, (int, np.integer)) else seed
    for p, zp in zip(params, z, strict=True):
        p.add_(zp, alpha=alpha)


@torch.no_grad()
def projected_gradient(params: Sequence[torch.Tensor], loss_fn: Callable[[], float], seed: int | Sequence[torch.Tensor],
                       eps: float) -> tuple[float, float, float]:
    """(g, L+, L-) for direction z(seed); the parameters end where they started (up to float rounding).
    z is drawn once and used three times (on a GPU, drawing on the CPU costs more than the adds)."""
    z = direction(params, seed) if isinstance(seed, (int, np.integer)) else seed
    add_direction(params, z, eps)
    loss_plus = float(loss_fn())
    add_direction(params, z, -2 * eps)
    loss_minus = float(loss_fn())
    add_direction(params, z, eps)
    return (loss_plus - loss_minus) / (2 * eps), loss_plus, loss_minus


def step_coefficient(grad: float, lr: float, q: int) -> float:
    """The multiple of z(seed) a step adds; one expression for client and server so replays are bit-exact."""
    return -lr * float(np.float32(grad)) / q


def lr_at(step: int, steps: int, lr: float, schedule: str) -> float:
    if schedule == "constant":
        return lr
    frac = step / max(steps, 1)
    if schedule == "linear":
        return lr * (1.0 - frac)
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown lr schedule '{schedule}'")


def step_seeds(seed: int, steps: int, q: int) -> np.ndarray:
    """(steps, q) direction seeds derived from the round's work seed."""
    return np.random.default_rng(seed).integers(0, 2**31 - 1, size=(steps, q), dtype=np.int64)


@torch.no_grad()
def zo_train(params: Sequence[torch.Tensor], batch_loss: Callable[[int], float], seeds: np.ndarray, lr: float,
             schedule: str, eps: float, grad_clip: float = 0.0) -> tuple[np.ndarray, list[float]]:
    """Run ``len(seeds)`` SPSA steps in place. ``batch_loss(step)`` evaluates the loss of that step's batch at the
    current parameters. Returns the projected gradients (float32, shaped like ``seeds``) and per-step losses
    (mean of L+ and L-, MeZO's training-loss estimate)."""
    steps, q = seeds.shape
    grads = np.zeros((steps, q), dtype=np.float32)
    losses = []
    for t in range(steps):
        step_losses, zs = [], []
        for i in range(q):
            zs.append(direction(params, int(seeds[t, i])))
            g, lp, lm = projected_gradient(params, lambda: batch_loss(t), zs[-1], eps)
            if grad_clip > 0:
                g = max(-grad_clip, min(grad_clip, g))
            grads[t, i] = g
            step_losses += [lp, lm]
        lr_t = lr_at(t, steps, lr, schedule)
        for i in range(q):
            add_direction(params, zs[i], step_coefficient(grads[t, i], lr_t, q))
        losses.append(sum(step_losses) / len(step_losses))
    return grads, losses


@torch.no_grad()
def replay(params: Sequence[torch.Tensor], seeds: np.ndarray, grads: np.ndarray, lr: float, schedule: str) -> None:
    """Apply the updates of (seeds, projected gradients) in place: what :func:`zo_train` did, minus the probing."""
    steps, q = seeds.shape
    for t in range(steps):
        lr_t = lr_at(t, steps, lr, schedule)
        for i in range(q):
            add_direction(params, int(seeds[t, i]), step_coefficient(grads[t, i], lr_t, q))
