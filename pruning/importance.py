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
# Public importance: what a device may prune by under user-level DP (docs/privacy.md, docs/fedspine.md).
PUBLIC_WINDOWS = 16  # calibration windows of the public split (evenly spaced) the public scores are measured on


def weight_scores(dense_model, dims: Dims) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Squared weight norms of the dense base per query head and per MLP channel (data-free).

    Kept for comparison only (benchmarks/pruning_damage.py): it ignores the scale of each structure's input
    (RMSNorm gains, activations), and on SmolLM2-135M pruning 5% of the MLP channels by it took held-out
    perplexity from 128 to 3,100 -- worse than random (188). Masks use :func:`activation_scores`."""
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


@torch.no_grad()
def activation_scores(dense_model, inputs: torch.Tensor, dims: Dims, batch_size: int = 8
                      ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per query head and MLP channel: the summed squared norm of what it adds to the residual stream over
    ``inputs`` -- exactly ``||o_proj[:, head] x_head||^2`` and ``||down_proj[:, c]||^2 * sum h_c^2``, the output
    change when that structure alone is removed (the structured form of Wanda, Sun et al. 2023).

    On public ``inputs`` (the public split) and the public dense base, the scores -- and masks chosen by them --
    depend on no device's data, and the server recomputes them exactly (:func:`public_structure`) from the same
    stored scores (:func:`public_scores`). Rounded to 6 significant digits."""
    layers = decoder_layers(dense_model)
    d = dims.head_dim
    heads = [np.zeros(dims.num_heads) for _ in layers]
    channels = [np.zeros(dims.intermediate_size) for _ in layers]

    def hooks(i):
        def on_o(module, args):  # input of o_proj: the heads' outputs side by side
            x = args[0].detach().float().reshape(-1, dims.num_heads, d)
            w = module.weight.detach().float().reshape(-1, dims.num_heads, d)
            gram = torch.einsum("ohd,ohe->hde", w, w)  # W_h^T W_h per head
            heads[i] += torch.einsum("thd,hde,the->h", x, gram, x).double().cpu().numpy()

        def on_down(module, args):  # input of down_proj: the MLP channels' activations
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            col = module.weight.detach().float().square().sum(0)
            channels[i] += (x.square().sum(0) * col).double().cpu().numpy()
        return on_o, on_down

    handles = []
    for i, layer in enumerate(layers):
        on_o, on_down = hooks(i)
        handles += [layer.self_attn.o_proj.register_forward_pre_hook(on_o),
                    layer.mlp.down_proj.register_forward_pre_hook(on_down)]
    try:
        device = next(dense_model.parameters()).device
        for start in range(0, len(inputs), batch_size):
            dense_model(input_ids=inputs[start:start + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
    round6 = lambda a: np.array([float(f"{v:.6g}") for v in a])  # noqa: E731
    return [round6(h) for h in heads], [round6(c) for c in channels]


def public_calibration(public_ids, seq_len: int, pad_id: int, count: int = PUBLIC_WINDOWS) -> torch.Tensor:
    """``count`` windows spread evenly over the public split: the inputs the public scores are measured on."""
    from textdata.corpus import windows

    x, _ = windows(public_ids, seq_len, pad_id)
    idx = torch.linspace(0, len(x) - 1, min(count, len(x))).round().long()
    return x[idx]


_PUBLIC: dict[tuple, tuple] = {}


def public_scores(folder, corpus, seq_len: int, dims: Dims) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """:func:`activation_scores` of the dense base in ``folder`` on the public split's calibration windows.

    A public artifact of the base, like the checkpoint itself: computed once (fp32, CPU) and stored next to it
    (``public_scores_<seq_len>_<windows>.npz``), so devices and the server read the very same numbers. Computed
    separately in each process, float noise from different thread counts flipped near-tied channels and the
    server rejected honest masks (measured on SmolLM2-135M in the combined federation)."""
    from pathlib import Path

    from filelock import FileLock

    folder = Path(folder)
    n = len(corpus.public_ids)
    key = (str(folder), seq_len, n)
    if key not in _PUBLIC:
        path = folder / f"public_scores_{seq_len}_{PUBLIC_WINDOWS}_{n}.npz"
        with FileLock(str(path) + ".lock"):
            if not path.exists():
                from models.base_checkpoint import load_base_model

                inputs = public_calibration(corpus.public_ids, seq_len, corpus.tokenizer.pad_token_id)
                heads, channels = activation_scores(load_base_model(folder), inputs, dims)
                tmp = path.with_name(path.stem + ".tmp.npz")
                np.savez(tmp, heads=np.stack(heads), channels=np.stack(channels))
                tmp.rename(path)  # atomic: a reader never sees half a file
            with np.load(path) as f:
                _PUBLIC[key] = (list(f["heads"]), list(f["channels"]))
    return _PUBLIC[key]


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
