"""Nested (DyLoRA) adapters on PEFT's LoRA layers: the first b components of every A and B.

A rank-R PEFT adapter holds ``lora_A.weight`` (R x in) and ``lora_B.weight`` (out x R). Its rank-b truncation
keeps ``A[:b, :]`` and ``B[:, :b]`` and is run by an ordinary PEFT LoRA layer of rank b scaled by
(alpha / R) sqrt(R / b), DyLoRA's rescaling (Valipour et al. 2023; ``method.lora.rescale: dylora``, see
``models.lora.peft_config``). Clients therefore get
rank-b arrays and a rank-b PEFT adapter (``Work.rank = b``), train them, and upload only the truncated
factors; the server writes them back into the first b components of the rank-R adapter. No LoRA code here:
only slicing of PEFT's weights, and PEFT adapters of the other ranks for evaluation.
"""

from __future__ import annotations

import numpy as np
from peft import get_peft_model_state_dict, set_peft_model_state_dict
import torch

from models.evaluation import LMScore, evaluate_lm
from models.lora import peft_config
from runconfig.schema import LoraConfig


def _is_a(key: str) -> bool:
    return "lora_A" in key


def _is_b(key: str) -> bool:
    return "lora_B" in key


def truncate(adapter: dict[str, np.ndarray], b: int) -> dict[str, np.ndarray]:
    """The rank-b view: first b rows of each A, first b columns of each B (copies)."""
    out = {}
    for k, v in adapter.items():
        if _is_a(k):
            out[k] = np.ascontiguousarray(v[:b, :])
        elif _is_b(k):
            out[k] = np.ascontiguousarray(v[:, :b])
        else:
            raise ValueError(f"not a LoRA factor: {k}")
    return out


def embed(full: dict[str, np.ndarray], part: dict[str, np.ndarray], b: int) -> dict[str, np.ndarray]:
    """``full`` with its first b components replaced by ``part`` (the components beyond b unchanged)."""
    out = {k: v.copy() for k, v in full.items()}
    for k, v in part.items():
        if _is_a(k):
            out[k][:b, :] = v
        elif _is_b(k):
            out[k][:, :b] = v
    return out


def sample_rank(rng: np.random.Generator, distribution: str, min_rank: int, max_rank: int) -> int:
    """The round's rank from a public distribution (no client data enters): uniform on [min, max] or fixed."""
    if distribution == "fixed":
        return max_rank
    if distribution == "uniform":
        return int(rng.integers(min_rank, max_rank + 1))
    raise ValueError(f"method.dylora.rank_distribution: unknown '{distribution}' (uniform or fixed)")


def evaluate_at_rank(
    peft_model, adapter: dict[str, np.ndarray], b: int, cfg: LoraConfig, inputs: torch.Tensor, labels: torch.Tensor
) -> LMScore:
    """Score the rank-b truncation of a rank-R adapter with a PEFT adapter of rank b (added once, reused)."""
    name = f"rank{b}"
    if name not in peft_model.peft_config:
        peft_model.add_adapter(name, peft_config(cfg, b))
    state = {k: torch.from_numpy(v.astype(np.float32)) for k, v in truncate(adapter, b).items()}
    expected = set(get_peft_model_state_dict(peft_model, adapter_name=name))
    if set(state) != expected:
        raise ValueError(f"rank-{b} adapter keys do not match the model")
    set_peft_model_state_dict(peft_model, state, adapter_name=name)
    previous = peft_model.active_adapter
    peft_model.set_adapter(name)
    try:
        return evaluate_lm(peft_model, inputs, labels)
    finally:
        peft_model.set_adapter(previous)
