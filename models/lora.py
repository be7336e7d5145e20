"""PEFT LoRA adapters on a frozen base model, and their tensors as a flat name -> array mapping."""

from __future__ import annotations

import math

import numpy as np
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from runconfig.schema import LoraConfig


def peft_config(cfg: LoraConfig, rank: int | None = None) -> PeftLoraConfig:
    """PEFT's LoRA config at ``rank`` (default: the full rank). ``cfg.rescale == "dylora"`` scales a rank-r
    adapter by (alpha / R) * sqrt(R / r), DyLoRA's rescaling, through PEFT's rsLoRA scaling (alpha' / sqrt(r))
    with alpha' = alpha / sqrt(R): the same at r = R as the standard alpha / R, larger below it."""
    r = rank or cfg.rank
    dylora = cfg.rescale == "dylora"
    return PeftLoraConfig(
        r=r,
        lora_alpha=cfg.alpha / math.sqrt(cfg.rank) if dylora else cfg.alpha,
        use_rslora=dylora,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def attach_lora(base_model, cfg: LoraConfig, seed: int, rank: int | None = None) -> PeftModel:
    """Wrap the base model with a freshly initialised adapter (PEFT's init: A random, B zero)."""
    torch.manual_seed(seed)
    return get_peft_model(base_model, peft_config(cfg, rank))


def adapter_arrays(model: PeftModel) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().float().numpy().copy() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter_arrays(model: PeftModel, arrays: dict[str, np.ndarray]) -> None:
    expected = set(get_peft_model_state_dict(model))
    if set(arrays) != expected:
        missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
        raise ValueError(f"adapter keys do not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    state = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}
    result = set_peft_model_state_dict(model, state)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"unexpected adapter keys: {result.unexpected_keys[:3]}")
