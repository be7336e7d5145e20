"""Structured pruning: shapes, equivalence with zeroed dense weights, GQA consistency, every architecture."""

import copy

import numpy as np
import pytest
import torch

from models.architectures import ARCHITECTURES, build_model
from models.lora import attach_lora
from pruning.importance import ImportanceTracker
from pruning.prune import parameter_count, prune_model, zero_pruned
from pruning.structure import Dims, Structure, select
from runconfig.schema import LoraConfig

pytestmark = pytest.mark.fedspine

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny(arch: str, heads: int = 4, kv: int = 2):
    config_cls, _ = ARCHITECTURES[arch]
    config = config_cls(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=32,
                        tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = build_model(config, seed=0).eval()
    with torch.no_grad():  # non-trivial biases (Qwen2 has q/k/v biases) so equivalence checks them too
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def random_structure(dims: Dims, seed: int, sparsity: float, rule: str) -> Structure:
    rng = np.random.default_rng(seed)
    scores_h = [rng.random(dims.num_heads) for _ in range(dims.num_layers)]
    scores_c = [rng.random(dims.intermediate_size) for _ in range(dims.num_layers)]
    return select(scores_h, scores_c, Structure.dense(dims), dims, sparsity, rule)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("rule, heads, kv", [("within_groups", 4, 2), ("whole_groups", 8, 4), ("within_groups", 8, 2)])
def test_pruned_model_matches_zeroed_dense_model(arch, rule, heads, kv):
    dense = tiny(arch, heads, kv)
    dims = Dims.of(dense.config)
    structure = random_structure(dims, seed=1, sparsity=0.5, rule=rule)
    pruned = copy.deepcopy(dense)
    prune_model(pruned, structure, dims)
    zero_pruned(dense, structure, dims)
    x = torch.randint(3, 64, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(pruned(input_ids=x).logits, dense(input_ids=x).logits, atol=1e-5, rtol=1e-4)
    # shapes and config follow the structure
    d = dims.head_dim
    attn, mlp = pruned.model.layers[0].self_attn, pruned.model.layers[0].mlp
    assert attn.q_proj.weight.shape == (structure.kept_heads() * d, 32)
    assert attn.k_proj.weight.shape == (structure.kept_groups(dims) * d, 32)
    assert attn.o_proj.weight.shape == (32, structure.kept_heads() * d)
    assert mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape == (24, 32)
    assert mlp.down_proj.weight.shape == (32, 24)
    assert pruned.config.intermediate_size == 24
    assert pruned.config.num_attention_heads == structure.kept_heads()
    assert parameter_count(pruned) < parameter_count(dense)


@pytest.mark.parametrize("rule", ["within_groups", "whole_groups"])
def test_gqa_groups_stay_consistent(rule):
    dims = Dims(num_layers=3, num_heads=8, num_kv_heads=2, head_dim=4, intermediate_size=16)
    for sparsity in (0.1, 0.3, 0.5, 0.8):
        s = random_structure(dims, seed=7, sparsity=sparsity, rule=rule)
        for layer in range(dims.num_layers):
            per_group = s.heads[layer].reshape(2, 4).sum(1)
            kept = per_group[per_group > 0]
            assert len(set(kept.tolist())) == 1  # every surviving group has the same number of query heads
            if rule == "whole_groups":
                assert set(per_group.tolist()) <= {0, 4}  # groups removed whole, with all their query heads
            else:
                assert (per_group > 0).all()  # key/value heads are never removed
        assert len({int(h.sum()) for h in s.heads}) == 1  # one config describes every layer
    with pytest.raises(ValueError, match="per KV group"):
        Structure([np.array([1, 1, 1, 0, 0, 0, 0, 1], bool)], [np.ones(16, bool)]).check(
            Dims(1, 8, 2, 4, 16))


def test_pruning_never_regrows_and_sparsity_rises():
    dims = Dims(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=40)
    rng = np.random.default_rng(0)
    s = Structure.dense(dims)
    last = 0.0
    for target in (0.2, 0.4, 0.6):
        new = select([rng.random(4) for _ in range(2)], [rng.random(40) for _ in range(2)], s, dims, target)
        for a, b in zip(new.channels + new.heads, s.channels + s.heads):
            assert not (a & ~b).any()
        sp = new.sparsity(dims, hidden_size=32)
        assert sp > last
        s, last = new, sp


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_pruned_model_trains_lora_and_generates(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny(arch)
    dims = Dims.of(model.config)
    structure = random_structure(dims, seed=3, sparsity=0.5, rule="within_groups")
    prune_model(model, structure, dims)
    model.requires_grad_(False)
    peft = attach_lora(model, LoraConfig(rank=4, alpha=8, target_modules=TARGETS), seed=0)
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-2)
    tracker = ImportanceTracker()
    x = torch.randint(3, 64, (4, 12))
    for _ in range(3):
        loss = peft(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        tracker.update(peft)
        opt.step()
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in peft.named_parameters())
    heads, channels = tracker.full_scores(structure, dims)
    assert (heads[0][~structure.heads[0]] == 0).all() and (heads[0][structure.heads[0]] > 0).all()
    assert (channels[1][structure.channels[1]] > 0).sum() > 0
    merged = peft.merge_and_unload()
    out = merged.generate(input_ids=x[:1, :4], max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 9)
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=x).logits, merged(input_ids=x).logits)
