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
def projected_gradients(params: Sequence[Sequence[torch.Tensor]], losses: Callable[[], Sequence[float]],
                        z: Sequence[Sequence[torch.Tensor]], eps: float) -> tuple[list[float], list[float], list[float]]:
    """(g, L+, L-) of each of K devices, device k along its own drawn direction ``z[k]``; ``losses()`` gives every
    device's loss at the current parameters. The parameters end where they started (up to float rounding)."""
    move(params, z, eps)
    plus = [float(v) for v in losses()]
    move(params, z, -2 * eps)
    minus = [float(v) for v in losses()]
    move(params, z, eps)
    return [(lp - lm) / (2 * eps) for lp, lm in zip(plus, minus)], plus, minus


def projected_gradient(params: Sequence[torch.Tensor], loss_fn: Callable[[], float], seed: int | Sequence[torch.Tensor],
                       eps: float) -> tuple[float, float, float]:
    """(g, L+, L-) for direction z(seed) of one device. z is drawn once and used three times (on a GPU, drawing
    on the CPU costs more than the adds)."""
    z = direction(params, seed) if isinstance(seed, (int, np.integer)) else seed
    g, plus, minus = projected_gradients([params], lambda: [loss_fn()], [z], eps)
    return g[0], plus[0], minus[0]


def move(params: Sequence[Sequence[torch.Tensor]], z: Sequence[Sequence[torch.Tensor]], alpha: float) -> None:
    """Every device's parameters += alpha * its own z."""
    for p, zp in zip(params, z, strict=True):
        add_direction(p, zp, alpha)


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


def clip_gradient(g: float, grad_clip: float) -> float:
    return max(-grad_clip, min(grad_clip, g)) if grad_clip > 0 else g


@torch.no_grad()
def zo_train_devices(params: Sequence[Sequence[torch.Tensor]], batch_losses: Callable[[int], Sequence[float]],
                     seeds: Sequence[np.ndarray], lr: float, schedule: str, eps: float, grad_clip: float = 0.0
                     ) -> tuple[list[np.ndarray], list[list[float]]]:
    """SPSA steps for K devices at once, in place: device k perturbs and steps its own ``params[k]`` along its own
    directions (``seeds[k]``, each (steps, q)), and ``batch_losses(step)`` evaluates every device's loss of that
    step's batch at the current parameters (one forward for all: the devices' rows are separate). Device k's
    arithmetic is exactly :func:`projected_gradient` then the step, as if it trained alone. Returns each device's
    projected gradients (float32, shaped like its seeds) and per-step losses (mean of L+ and L-, MeZO's
    training-loss estimate)."""
    k = len(params)
    steps, q = seeds[0].shape
    grads = [np.zeros((steps, q), dtype=np.float32) for _ in range(k)]
    losses: list[list[float]] = [[] for _ in range(k)]
    for t in range(steps):
        step_losses: list[list[float]] = [[] for _ in range(k)]
        zs = []
        for i in range(q):
            zs.append([direction(params[j], int(seeds[j][t, i])) for j in range(k)])
            g, plus, minus = projected_gradients(params, lambda: batch_losses(t), zs[-1], eps)
            for j in range(k):
                grads[j][t, i] = clip_gradient(g[j], grad_clip)
                step_losses[j] += [plus[j], minus[j]]
        lr_t = lr_at(t, steps, lr, schedule)
        for j in range(k):
            for i in range(q):
                add_direction(params[j], zs[i][j], step_coefficient(grads[j][t, i], lr_t, q))
            losses[j].append(sum(step_losses[j]) / len(step_losses[j]))
    return grads, losses


def zo_train(params: Sequence[torch.Tensor], batch_loss: Callable[[int], float], seeds: np.ndarray, lr: float,
             schedule: str, eps: float, grad_clip: float = 0.0) -> tuple[np.ndarray, list[float]]:
    """One device's :func:`zo_train_devices`: ``batch_loss(step)`` is its loss of that step's batch."""
    grads, losses = zo_train_devices([params], lambda t: [batch_loss(t)], [seeds], lr, schedule, eps, grad_clip)
    return grads[0], losses[0]


@torch.no_grad()
def replay(params: Sequence[torch.Tensor], seeds: np.ndarray, grads: np.ndarray, lr: float, schedule: str) -> None:
    """Apply the updates of (seeds, projected gradients) in place: what :func:`zo_train` did, minus the probing."""
    steps, q = seeds.shape
    for t in range(steps):
        lr_t = lr_at(t, steps, lr, schedule)
        for i in range(q):
            add_direction(params, int(seeds[t, i]), step_coefficient(grads[t, i], lr_t, q))
