"""Record-level DP-SGD with Opacus on PEFT LoRA layers, with the pinned versions (opacus#820 regression)."""

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

from client.device_data import DeviceData
from client.trainers import get_trainer
from models.architectures import build_config, build_model
from models.lora import attach_lora
from protocol.messages import Work
from runconfig.schema import LoraConfig, ModelConfig

pytestmark = pytest.mark.privacy


def tiny_llama(vocab=64):
    cfg = ModelConfig(name="t", arch="llama", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                      intermediate_size=48, max_position_embeddings=32)
    return build_model(build_config(cfg, vocab, 0, 1, 2), seed=0)


def test_dp_step_changes_only_lora_and_nothing_is_nan():
    torch.manual_seed(0)
    model = attach_lora(tiny_llama(), LoraConfig(rank=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]), 0)
    with torch.no_grad():  # B starts at zero in PEFT; make the A gradients non-trivial too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randint(3, 64, (24, 16))
    data = DeviceData(x, x.clone(), x[:4], x[:4].clone())
    work = Work(server_round=1, device_index=0, trainer="lora_dpsgd", local_steps=3, batch_size=8, lr=1e-2, rank=4,
                seed=7, extra={"dp_record_sigma": 1.0, "dp_record_clip": 1.0})
    result = get_trainer("lora_dpsgd").train(model, data, work)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed, "a DP step must move the adapter"
    assert all("lora_" in n for n in changed), sorted(changed)[:3]
    assert {n for n in before if "lora_" in n} == changed  # every LoRA tensor moved (noise reaches them all)
    assert all(np.isfinite(v).all() for v in result.adapter.values())
    assert result.metrics["dp_record_steps"] == 3
    assert 0 < result.metrics["dp_record_epsilon_round"] < float("inf")
    # Opacus hooks are gone: the PEFT model trains normally afterwards (the runtime reuses it)
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters())
    model(input_ids=x[:2]).logits.sum().backward()


def test_per_sample_grads_of_a_peft_lora_layer_match_hand_computation():
    """Opacus's grad_sample of PEFT's lora_A / lora_B equals the closed form, per sample, over a time axis."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    peft_model = get_peft_model(base, PeftLoraConfig(r=2, lora_alpha=4, target_modules=["2"]))
    layer = peft_model.base_model.model[2]
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        B.normal_(0, 0.3)
    scale = layer.scaling["default"]
    gsm = GradSampleModule(peft_model, loss_reduction="sum")
    x = torch.randn(4, 7, 6)  # batch 4, sequence 7
    target = torch.randn(4, 7, 3)
    out = gsm(x)
    ((out - target) ** 2).sum().backward()  # sum reduction: per-sample grads are plain per-sample gradients
    h = torch.tanh(base[0](x)).detach()  # input of the LoRA layer
    g = 2 * (out - target).detach()  # dL/dy per sample and position
    hand_B = scale * torch.einsum("nto,ntr->nor", g, h @ A.detach().T)  # sum_t g_t (A h_t)^T
    hand_A = scale * torch.einsum("ntr,nti->nri", g @ B.detach(), h)  # sum_t (B^T g_t) h_t^T
    torch.testing.assert_close(B.grad_sample, hand_B, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(A.grad_sample, hand_A, rtol=1e-5, atol=1e-6)
    assert not hasattr(base[0].weight, "grad_sample") or base[0].weight.grad_sample is None  # frozen: untouched
    gsm.to_standard_module()
