"""Model building for each architecture, hub-style loading by ``model.name_or_path``, and LoRA round trips."""

import numpy as np
import pytest
import torch

from models.architectures import ARCHITECTURES, build_config, build_model
from models.base_checkpoint import ensure_base_checkpoint, load_base_model, load_corpus
from models.evaluation import evaluate_lm
from models.lora import adapter_arrays, attach_lora, load_adapter_arrays
from runconfig.load import compose
from runconfig.schema import ModelConfig
from textdata.corpus import windows
from textdata.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["To be, or not to be, that is the question. " * 50], vocab_size=300)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_tiny_random_model_of_each_architecture(arch, tokenizer, tmp_path, cache_dir):
    cfg = ModelConfig(name=f"tiny-{arch}", arch=arch, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=128, max_position_embeddings=64)
    config = build_config(cfg, len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    model = build_model(config, seed=0)
    assert model.config.model_type == arch
    assert model.config.num_key_value_heads == 2  # grouped-query attention
    ids = torch.tensor([tokenizer("To be, or not to be")["input_ids"]])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))
    # Saved like a hub checkpoint, it loads through `model.name_or_path` with its own tokenizer.
    model.save_pretrained(tmp_path / arch)
    tokenizer.save_pretrained(tmp_path / arch)
    s = compose(["+fleet=8dev_test", "model=hf", f"model.name_or_path={tmp_path / arch}", f"cache_dir={cache_dir}",
                 "data.seq_len=32"])
    corpus = load_corpus(s)
    assert corpus.tokenizer.vocab_size == tokenizer.vocab_size
    folder = ensure_base_checkpoint(s, corpus)
    loaded = load_base_model(folder)
    assert not any(p.requires_grad for p in loaded.parameters())
    peft_model = attach_lora(loaded, s.method.lora, seed=0)
    arrays = adapter_arrays(peft_model)
    assert arrays and all(("lora_A" in k) or ("lora_B" in k) for k in arrays)
    x, y = windows(corpus.client_test_ids(0), 32, corpus.tokenizer.pad_token_id)
    assert np.isfinite(evaluate_lm(peft_model, x[:2], y[:2]).loss)


def test_adapter_round_trip_and_key_check(tokenizer):
    cfg = ModelConfig(name="t", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    model = build_model(build_config(cfg, len(tokenizer), 0, 1, 2), seed=0)
    s = compose(["+fleet=8dev_test"])
    peft_model = attach_lora(model, s.method.lora, seed=0)
    arrays = adapter_arrays(peft_model)
    changed = {k: v + 1.0 for k, v in arrays.items()}
    load_adapter_arrays(peft_model, changed)
    after = adapter_arrays(peft_model)
    for k in arrays:
        np.testing.assert_allclose(after[k], arrays[k] + 1.0)
    with pytest.raises(ValueError, match="missing"):
        load_adapter_arrays(peft_model, dict(list(changed.items())[1:]))


def test_pretrained_tiny_llama_is_deterministic_and_cached(fast_overrides):
    s = compose(["+fleet=8dev_test", *fast_overrides])
    corpus = load_corpus(s)
    folder = ensure_base_checkpoint(s, corpus, show_progress=False)
    assert (folder / "config.json").exists() and (folder / "tokenizer.json").exists()
    mtime = (folder / "model.safetensors").stat().st_mtime
    assert ensure_base_checkpoint(s, corpus, show_progress=False) == folder
    assert (folder / "model.safetensors").stat().st_mtime == mtime  # cached, not retrained
    model = load_base_model(folder)
    # Pretraining taught it something: the public-split loss is far below a uniform guess.
    x, y = windows(corpus.public_ids[:4096], s.data.seq_len, corpus.tokenizer.pad_token_id)
    assert evaluate_lm(model, x, y).loss < np.log(len(corpus.tokenizer)) - 1.0
