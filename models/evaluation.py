"""Language-model quality on token windows: mean next-token loss, perplexity and next-token accuracy.

Shared by clients (their own test split) and the server (the global test set), so both report the same thing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class LMScore:
    loss: float  # mean next-token cross-entropy (nats)
    accuracy: float  # share of next tokens predicted exactly (argmax)
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 50.0))


def next_token_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(summed loss, correct count, token count) for causal LM logits against unshifted labels."""
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != -100
    loss_sum = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum"
    )
    correct = ((logits.argmax(-1) == target) & mask).sum().item()
    return loss_sum, int(correct), int(mask.sum().item())


@torch.no_grad()
def evaluate_lm(model, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 16) -> LMScore:
    was_training = model.training
    model.eval()
    total_loss, total_correct, total_tokens = 0.0, 0, 0
    for start in range(0, len(inputs), batch_size):
        x, y = inputs[start : start + batch_size], labels[start : start + batch_size]
        logits = model(input_ids=x).logits  # right padding only: causal attention never sees it
        loss_sum, correct, tokens = next_token_stats(logits, y)
        total_loss += loss_sum.item()
        total_correct += correct
        total_tokens += tokens
    model.train(was_training)
    tokens = max(total_tokens, 1)
    return LMScore(loss=total_loss / tokens, accuracy=total_correct / tokens, tokens=total_tokens)
