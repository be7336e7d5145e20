"""Language-model quality on token windows: mean next-token loss, perplexity and next-token accuracy.

Shared by clients (their own test split, one device or several in one forward) and the server (the global test
set), so all report the same thing; the loss is models/loss.py's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from models.loss import loss_stats, next_token_stats

__all__ = ["LMScore", "evaluate_lm", "evaluate_parts", "next_token_stats"]


@dataclass
class LMScore:
    loss: float  # mean next-token cross-entropy (nats)
    accuracy: float  # share of next tokens predicted exactly (argmax)
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 50.0))


@torch.no_grad()
def evaluate_parts(model, parts: Sequence[tuple[torch.Tensor, torch.Tensor]], forward_rows: int = 16,
                   **forward_kwargs) -> list[LMScore]:
    """One score per part (inputs, labels) -- e.g. each device's test windows -- from forwards of up to
    ``forward_rows`` windows that may span several parts; each part's loss is its own tokens' mean.
    ``forward_kwargs`` go to the model's forward (``use_cache=False``: no KV cache for a large batch)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    inputs = torch.cat([x for x, _ in parts])
    labels = torch.cat([y for _, y in parts])
    owner = [j for j, (x, _) in enumerate(parts) for _ in range(len(x))]  # the part of each window
    loss, correct, tokens = [0.0] * len(parts), [0] * len(parts), [0] * len(parts)
    for start in range(0, len(inputs), forward_rows):
        x = inputs[start:start + forward_rows].to(device)
        y = labels[start:start + forward_rows].to(device)
        chunk = owner[start:start + forward_rows]
        members = sorted(set(chunk))
        logits = model(input_ids=x, **forward_kwargs).logits  # right padding only: causal attention never sees it
        sums, hits, counts = loss_stats(logits, y, [chunk.count(j) for j in members])
        for j, s, h, n in zip(members, sums, hits, counts):
            loss[j] += s
            correct[j] += h
            tokens[j] += n
    model.train(was_training)
    return [LMScore(loss=loss[j] / max(tokens[j], 1), accuracy=correct[j] / max(tokens[j], 1), tokens=tokens[j])
            for j in range(len(parts))]


def evaluate_lm(model, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 16) -> LMScore:
    return evaluate_parts(model, [(inputs, labels)], batch_size)[0]
