"""Nested LoRA on PEFT layers, a public per-round rank, and one DP-DyLoRA round through the strategy."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message

from fleet.devices import build_fleet
from fleet.arch import ArchShape
from models.architectures import build_config, build_model
from models.evaluation import evaluate_lm
from models.lora import adapter_arrays, attach_lora, load_adapter_arrays
from server.strategy import build_strategy
from privacy.dylora import embed, evaluate_at_rank, truncate
from protocol.messages import ARRAYS, CONFIG, Update, Work, from_array_record, to_array_record
from runconfig.load import ConfigError, compose
from runconfig.schema import LoraConfig, ModelConfig
from simulations.inprocess import ensure_task_identity

pytestmark = pytest.mark.privacy

LORA = LoraConfig(rank=4, alpha=8, target_modules=["q_proj", "v_proj"])


def tiny_llama():
    cfg = ModelConfig(name="t", arch="llama", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                      intermediate_size=48, max_position_embeddings=32)
    return build_model(build_config(cfg, 64, 0, 1, 2), seed=0)


def random_adapter(model, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 0.2, v.shape).astype(np.float32) for k, v in adapter_arrays(model).items()}


def test_truncate_and_embed_touch_only_the_first_b_components():
    model = attach_lora(tiny_llama(), LORA, 0)
    full = random_adapter(model)
    part = truncate(full, 2)
    for k, v in part.items():
        assert v.shape == ((2, full[k].shape[1]) if "lora_A" in k else (full[k].shape[0], 2))
    bumped = {k: v + 1 for k, v in part.items()}
    merged = embed(full, bumped, 2)
    for k in full:
        if "lora_A" in k:
            assert np.array_equal(merged[k][2:], full[k][2:]) and np.array_equal(merged[k][:2], bumped[k])
        else:
            assert np.array_equal(merged[k][:, 2:], full[k][:, 2:]) and np.array_equal(merged[k][:, :2], bumped[k])
    assert np.array_equal(embed(full, truncate(full, 4), 4)["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"],
                          full["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"])


@pytest.mark.parametrize("rescale", ["standard", "dylora"])
def test_every_rank_of_the_trained_adapter_runs_on_peft_layers_with_its_scaling(rescale):
    """Rank b of a rank-R adapter = a PEFT rank-b adapter holding the first b components, scaled alpha/b
    (standard) or (alpha/R) sqrt(R/b) (DyLoRA's rescaling); both give alpha/R at b = R."""
    lora = LoraConfig(**{**LORA.__dict__, "rescale": rescale})
    torch.manual_seed(0)
    peft_model = attach_lora(tiny_llama(), lora, 0)
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(lora.alpha / lora.rank)
    full = random_adapter(peft_model)
    load_adapter_arrays(peft_model, full)
    x = torch.randint(3, 64, (6, 16))
    full_score = evaluate_lm(peft_model, x, x)
    assert evaluate_at_rank(peft_model, full, 4, lora, x, x) == full_score
    for b in (1, 2, 3):
        score = evaluate_at_rank(peft_model, full, b, lora, x, x)
        expected = lora.alpha / b if rescale == "standard" else lora.alpha / lora.rank * (lora.rank / b) ** 0.5
        assert layer.scaling[f"rank{b}"] == pytest.approx(expected)
        reference = attach_lora(tiny_llama(), lora, 1, rank=b)  # a fresh PEFT model of rank b
        load_adapter_arrays(reference, truncate(full, b))
        assert score == evaluate_lm(reference, x, x)
        assert score != full_score
    assert peft_model.active_adapter == "default"


def test_dp_dylora_uses_dylora_rescaling_and_bad_rules_are_refused():
    assert compose(["+fleet=8dev_test", "method=dp_dylora"]).method.lora.rescale == "dylora"
    assert compose(["+fleet=8dev_test", "method=dp_lora"]).method.lora.rescale == "standard"
    with pytest.raises(ConfigError, match="method.lora.rescale"):
        compose(["+fleet=8dev_test", "method=dp_dylora", "method.lora.rescale=sqrt"])


def setup_strategy(overrides, output_dir="."):
    ensure_task_identity()
    settings = compose(["+fleet=8dev_test", *overrides])
    settings.output_dir = str(output_dir)  # privacy_state.json goes here
    devices = build_fleet(settings.fleet, settings.seed)
    shape = ArchShape("toy", hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=2,
                  head_dim=16, vocab_size=64)
    strategy = build_strategy(settings, devices, shape, 1)
    strategy.node_of_device = {d.index: 100 + d.index for d in devices}
    return settings, strategy


def test_round_rank_is_public_and_the_same_for_every_client():
    _, s = setup_strategy(["method=dp_dylora", "privacy=none"])
    ranks = [s.round_rank(r) for r in range(1, 401)]
    assert ranks == [s.round_rank(r) for r in range(1, 401)]  # a function of (seed, round) only
    counts = np.bincount(ranks, minlength=9)[1:]
    assert set(ranks) == set(range(1, 9)) and counts.min() > 25  # uniform on 1..8
    _, fixed = setup_strategy(["method=dp_lora", "privacy=none"])
    assert {fixed.round_rank(r) for r in range(1, 50)} == {8}


def test_one_dp_dylora_round_trains_only_the_round_rank_and_keeps_the_rest(tmp_path):
    settings, s = setup_strategy(["method=dp_dylora", "privacy.noise_multiplier=0.5", "privacy.target_epsilon=null",
                                  "method.lora.target_modules=[q_proj,v_proj]", "method.lora.rank=4",
                                  "method.dylora.eval_ranks=[1,4]"], tmp_path)
    model = attach_lora(tiny_llama(), settings.method.lora, 0)
    full = random_adapter(model)
    rnd = next(r for r in range(1, 50) if s.round_rank(r) < 4)
    b = s.round_rank(rnd)
    messages = list(s.configure_train(rnd, to_array_record(full), ConfigRecord(), None))
    assert messages, "a cohort was sampled"
    replies = []
    rng = np.random.default_rng(0)
    for msg in messages:
        work = Work.from_config(msg.content[CONFIG])
        sent = from_array_record(msg.content[ARRAYS])
        assert work.rank == b and all(
            v.shape == truncate(full, b)[k].shape for k, v in sent.items())
        delta = {k: rng.normal(0, 1, v.shape).astype(np.float32) for k, v in sent.items()}  # norm >> C
        update = Update(work.device_index, rnd, delta, 10, {"train_loss": 1.0, "compute_s": 0.1, "host_gflops": 10.0})
        replies.append(Message(update.to_content(), reply_to=msg))
    arrays, metrics = s.aggregate_train(rnd, replies)
    new = from_array_record(arrays)
    assert metrics["dylora/rank"] == b and metrics["privacy/epsilon"] > 0
    assert (tmp_path / "privacy_state.json").exists()
    for k in full:
        if "lora_A" in k:
            assert np.array_equal(new[k][b:], full[k][b:]) and not np.allclose(new[k][:b], full[k][:b])
        else:
            assert np.array_equal(new[k][:, b:], full[k][:, b:]) and not np.allclose(new[k][:, :b], full[k][:, :b])
