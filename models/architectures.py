"""LLaMA-family causal LMs built from transformers configs (the project's own tiny models)."""

from __future__ import annotations

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from runconfig.schema import ModelConfig

ARCHITECTURES: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel]]] = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}


def build_config(cfg: ModelConfig, vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> PretrainedConfig:
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"model.arch: unknown '{cfg.arch}'; known: {', '.join(ARCHITECTURES)}")
    config_cls, _ = ARCHITECTURES[cfg.arch]
    return config_cls(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )


def build_model(config: PretrainedConfig, seed: int) -> PreTrainedModel:
    """A randomly initialised model of the config's architecture, deterministic in ``seed``."""
    _, model_cls = ARCHITECTURES[config.model_type]
    torch.manual_seed(seed)
    return model_cls(config)
