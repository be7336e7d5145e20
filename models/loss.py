"""The one loss of the project: shifted causal-LM cross-entropy (position t predicts token t+1, -100 ignored).

Rows of a batch may belong to K devices (K equal groups: the batched trainers stack K devices' batches) or to
parts of uneven size (evaluation of several devices' windows in one forward); every reduction here is per group,
and K = 1 is the plain case. Two reductions of the same per-token loss:

* :func:`train_loss` -- each group's mean next-token loss, differentiable. Its per-token loss is
  :class:`_TokenCrossEntropy` (fp32 math in row blocks, no fp32 copy of all logits, a fused backward): what a
  step costs on a CPU is mostly passes over logit-sized buffers (docs/benchmarks/throughput.md).
* :func:`loss_stats` -- forward only (evaluation, ZeroQAT's SPSA losses): summed loss, correct next tokens and
  token count per group, with torch's ``cross_entropy(reduction="sum")`` over each group's rows, the buffers
  ``fleet/cost_model.py`` prices (FORWARD_LOSS_BYTES_PER_LOGIT) and the summation SPSA's loss differences were
  tuned with (they resolve the last float bit). :func:`next_token_stats` is its one-group form with the summed
  loss a tensor, for loops written elsewhere (base-model pretraining, serving checks, benchmarks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = -100
CE_BLOCK_BYTES = 1 << 20  # an fp32 row block of logits per pass: 1 MiB stays in a core's L2 cache (2 MiB here)
CE_MAX_ROWS = 128


def ce_block_rows(vocab: int) -> int:
    """Rows of fp32 logits per pass of the fused cross-entropy: as many as fit in :data:`CE_BLOCK_BYTES`. Each
    pass (cast, max, exp, sum) then re-reads the block from cache; at SmolLM2's 49,152-token vocabulary 128 rows
    (25 MB) did not fit, and a [1024, 49152] bf16 forward+backward took 224 ms against 132 ms at 5 rows."""
    return max(1, min(CE_MAX_ROWS, CE_BLOCK_BYTES // (4 * vocab)))


class _TokenCrossEntropy(torch.autograd.Function):
    """Per-row next-token loss ``logsumexp(z) - z[target]`` in fp32 (0 where target is ``IGNORE_INDEX``),
    row block by row block; the backward writes ``(softmax(z) - onehot) * grad`` in the logits' dtype."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        rows = logits.shape[0]
        valid = target != IGNORE_INDEX
        safe = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)
        lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
        picked = torch.empty(rows, dtype=torch.float32, device=logits.device)
        step = ce_block_rows(logits.shape[1])
        for start in range(0, rows, step):
            block = logits[start:start + step].float()
            torch.logsumexp(block, dim=1, out=lse[start:start + step])
            picked[start:start + step] = block.gather(1, safe[start:start + step]).squeeze(1)
        ctx.save_for_backward(logits, safe, valid, lse)
        return (lse - picked) * valid

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, safe, valid, lse = ctx.saved_tensors
        scale = (grad.float() * valid).unsqueeze(1)
        out = torch.empty_like(logits)
        step = ce_block_rows(logits.shape[1])
        for start in range(0, logits.shape[0], step):
            end = start + step
            probs = logits[start:end].float().sub_(lse[start:end].unsqueeze(1)).exp_()
            probs.scatter_add_(1, safe[start:end], torch.full_like(safe[start:end], -1.0, dtype=probs.dtype))
            out[start:end] = probs.mul_(scale[start:end])
        return out, None


def token_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(logits.float(), target, ignore_index=-100, reduction="none")`` for [N, V] logits of any
    float dtype, without an fp32 copy of all logits and with a fused backward."""
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"expected [N, V] logits and [N] targets, got {tuple(logits.shape)} and {tuple(target.shape)}")
    return _TokenCrossEntropy.apply(logits, target)


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets aligned with every position: ``labels[:, 1:]``, then -100 (ignored) at the end (the
    logits keep their last position: no copy of them without it)."""
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)


def train_loss(logits: torch.Tensor, labels: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """[groups] each group's mean next-token loss (its summed loss over its own token count), for [B, T, V]
    logits whose B rows are ``groups`` equal contiguous groups. Their sum is the batched step's objective: a
    device's adapter only enters its own rows, so each gets exactly its own gradient."""
    target = shifted_targets(labels)
    per_token = token_cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1))
    tokens = (target != IGNORE_INDEX).reshape(groups, -1).sum(1).clamp(min=1)
    return per_token.view(groups, -1).sum(1) / tokens


def _sizes(rows: int, groups: int | Sequence[int]) -> list[int]:
    if isinstance(groups, int):
        if rows % groups:
            raise ValueError(f"{rows} rows do not split into {groups} equal groups")
        return [rows // groups] * groups
    if sum(groups) != rows:
        raise ValueError(f"group sizes {list(groups)} do not add up to the batch's {rows} rows")
    return list(groups)


def _stats(logits: torch.Tensor, target: torch.Tensor, correct: bool) -> tuple[torch.Tensor, int, int]:
    """(summed loss, correct count, token count) of fp32 logits already aligned with their targets."""
    mask = target != IGNORE_INDEX
    loss_sum = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                 ignore_index=IGNORE_INDEX, reduction="sum")
    hits = int(((logits.argmax(-1) == target) & mask).sum().item()) if correct else 0
    return loss_sum, hits, int(mask.sum().item())


@torch.no_grad()
def loss_stats(logits: torch.Tensor, labels: torch.Tensor, groups: int | Sequence[int] = 1, correct: bool = True
               ) -> tuple[list[float], list[int], list[int]]:
    """Forward only: per group (``groups`` equal groups, or the row count of each), the summed next-token loss,
    the count of exactly predicted next tokens (0s when ``correct`` is off) and the token count."""
    logits = logits[:, :-1].float()  # rebinds: a half-precision caller's logits are freed once copied
    target = labels[:, 1:]
    sums, hits, counts, lo = [], [], [], 0
    for size in _sizes(len(target), groups):
        loss_sum, hit, count = _stats(logits[lo:lo + size], target[lo:lo + size], correct)
        lo += size
        sums.append(loss_sum.item())
        hits.append(hit)
        counts.append(count)
    return sums, hits, counts


def mean_losses(logits: torch.Tensor, labels: torch.Tensor, groups: int = 1) -> list[float]:
    """Forward only: each group's mean next-token loss (ZeroQAT's L+ and L-)."""
    sums, _, counts = loss_stats(logits, labels, groups, correct=False)
    return [s / max(n, 1) for s, n in zip(sums, counts)]


def next_token_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(summed loss, correct count, token count) of one group, the summed loss a tensor (differentiable outside
    ``no_grad``): for callers that write their own loop (base-model pretraining, serving checks, benchmarks)."""
    logits = logits[:, :-1].float()
    return _stats(logits, labels[:, 1:], True)
