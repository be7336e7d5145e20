"""ZeroQAT (issue 8): quantizers against hand-computed values, packed storage, the SPSA estimator's expectation,
exact restoration and seed replay, and a real fleet simulation where the phones train forward-only."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from client.trainers.zeroqat import zeroqat_local_training
from client.device_data import DeviceData
from conftest import run_cli
from models.architectures import build_config, build_model
from models.lora import adapter_arrays, load_adapter_arrays
from protocol.messages import Update, Work
from quantization import packing
from quantization.convert import LINEAR_NAMES
from quantization.layers import FakeQuantLinear, PackedLinear, storage_bytes
from quantization.quantizers import fake_quant_activation, fake_quant_weight
from quantization.spec import parse_wa
from runconfig.load import ConfigError, compose
from strategies.fleet_fedavg import FleetFedAvg
from zeroqat.model import build_quantized, trainable_tensors
from zeroqat.spsa import projected_gradient, step_seeds, zo_train

pytestmark = pytest.mark.zeroqat
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def settings(fast_overrides):
    return compose(["+fleet=8dev_test", *fast_overrides])


def tiny_model(settings, arch="llama"):
    cfg = dataclasses.replace(settings.model, arch=arch, hidden_size=64, intermediate_size=160, num_layers=2)
    return build_model(build_config(cfg, 256, 0, 1, 2), 0)


# ------------------------------------------------------------------ quantizers
def test_wxay_notation_and_config_errors(fast_overrides):
    spec = parse_wa("W4A8", 64)
    assert (spec.w_bits, spec.a_bits, spec.group_size, spec.quantize_activations) == (4, 8, 64, True)
    assert not parse_wa("w2a16").quantize_activations
    for bad in ("W5A8", "W4", "4bit"):
        with pytest.raises(ValueError):
            parse_wa(bad)
    with pytest.raises(ConfigError, match="zeroqat.quant"):
        compose(["+fleet=8dev_test", "zeroqat.quant=W5A8", *fast_overrides])
    with pytest.raises(ConfigError, match="zeroqat.trainable"):
        compose(["+fleet=8dev_test", "zeroqat.trainable=qv", *fast_overrides])  # phones must train an adapter


def test_weight_fake_quant_matches_hand_computation():
    # 2 bits, per channel: range [-1, 2] -> scale 1, zero 1; codes 0,1,1,1,2,3 (round half to even).
    w = torch.tensor([[-1.0, -0.5, 0.0, 0.5, 1.0, 2.0]])
    assert torch.equal(fake_quant_weight(w, 2, 0), torch.tensor([[-1.0, 0.0, 0.0, 0.0, 1.0, 2.0]]))
    # 4 bits, groups of 2: [0, 3] is exact (scale 0.2, zero 0); [-1, 0.45]: scale 1.45/15, zero round(10.34)=10.
    w = torch.tensor([[0.0, 3.0, -1.0, 0.45]])
    s = 1.45 / 15
    expected = torch.tensor([[0.0, 3.0, (0 - 10) * s, (15 - 10) * s]])
    assert torch.allclose(fake_quant_weight(w, 4, 2), expected, atol=1e-6)
    # learnable clipping: factor 0.5 on [-1, 2] at 2 bits -> range [-0.5, 1], scale 0.5, zero 1.
    w = torch.tensor([[-1.0, -0.5, 0.0, 0.5, 1.0, 2.0]])
    assert torch.equal(fake_quant_weight(w, 2, 0, 0.5, 0.5), torch.tensor([[-0.5, -0.5, 0.0, 0.5, 1.0, 1.0]]))
    # 8 bits are near-lossless; a round trip is idempotent.
    w = torch.randn(16, 64)
    once = fake_quant_weight(w, 8, 32)
    assert (once - w).abs().max() < (w.abs().max() * 2 / 255)
    assert torch.allclose(fake_quant_weight(once, 8, 32), once, atol=1e-6)


def test_activation_fake_quant_is_per_token_and_matches_hand_computation():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0], [-1.0, 0.0, 0.4, 2.0]])
    # row 0: [0, 3] at 2 bits is exact; row 1: scale 1, zero 1, 0.4 rounds to 0.
    assert torch.equal(fake_quant_activation(x, 2), torch.tensor([[0.0, 1.0, 2.0, 3.0], [-1.0, 0.0, 0.0, 2.0]]))
    assert torch.equal(fake_quant_activation(x, 16), x)


def test_activation_fake_quant_passes_gradients_straight_through():
    # Backprop QAT: quantized forward, identity backward (round alone has gradient 0 everywhere).
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0], [-1.0, 0.0, 0.4, 2.0]], requires_grad=True)
    y = fake_quant_activation(x, 2)
    assert torch.equal(y.detach(), fake_quant_activation(x.detach(), 2))
    (y * torch.arange(8.0).reshape(2, 4)).sum().backward()
    assert torch.equal(x.grad, torch.arange(8.0).reshape(2, 4))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_packing_round_trip_and_size(bits):
    codes = torch.randint(0, 2**bits, (1000,), dtype=torch.uint8)
    packed = packing.pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == 1000 * bits // 8
    assert torch.equal(packing.unpack(packed, bits, 1000), codes)


def test_packed_linear_is_really_smaller_and_agrees_with_fake_quant():
    torch.manual_seed(0)
    linear = nn.Linear(256, 512, bias=False)
    packed = PackedLinear(linear, bits=4, group_size=64, a_bits=8)
    # 4-bit codes: half a byte per weight, plus fp16 scale and zero per group of 64.
    assert packed.packed.numel() == 512 * 256 // 2
    assert storage_bytes(packed) == 512 * 256 // 2 + 512 * 4 * 2 * 2
    assert storage_bytes(packed) < storage_bytes(linear) / 7
    x = torch.randn(3, 5, 256)
    expected = nn.functional.linear(fake_quant_activation(x, 8), fake_quant_weight(linear.weight, 4, 64))
    assert torch.allclose(packed(x), expected, atol=2e-3)  # fp16 storage of scale/zero is the only difference
    three = PackedLinear(linear, bits=3, group_size=0, a_bits=16)
    assert three.packed.numel() == 512 * 256 * 3 // 8


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_quantized_lora_model_per_architecture(settings, arch):
    model = tiny_model(settings, arch)
    x = torch.randint(0, 256, (2, 16))
    fp_bytes, ref = storage_bytes(model), model(input_ids=x).logits
    qmodel = build_quantized(model, settings.zeroqat, [x], settings.method.lora, 0, 4)
    kinds = [type(m) for n, m in qmodel.named_modules() if n.endswith("base_layer")]
    assert len(kinds) == 2 * len(LINEAR_NAMES) and set(kinds) == {PackedLinear}
    assert storage_bytes(qmodel) < fp_bytes  # embeddings stay float; every projection is packed
    out = qmodel(input_ids=x).logits
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert list(trainable_tensors(qmodel, "lora")) == sorted(adapter_arrays(qmodel))
    qv = build_quantized(tiny_model(settings, arch), dataclasses.replace(settings.zeroqat, trainable="qv"), [x])
    assert sum(isinstance(m, FakeQuantLinear) for m in qv.modules()) == 4  # q_proj, v_proj per layer
    assert len(trainable_tensors(qv, "qv")) == 12


# ------------------------------------------------------------------ the estimator
def test_spsa_expectation_matches_true_gradient_on_a_quadratic():
    """For L = 0.5 x'Ax + b'x the symmetric difference is exactly z'grad, so E[g z] = grad; each component of
    the sample has variance |grad|^2 + grad_i^2: check within 5 standard errors."""
    rng = np.random.default_rng(0)
    d, n = 6, 4000
    m = rng.normal(size=(d, d))
    a = torch.tensor(m @ m.T / d + np.eye(d), dtype=torch.float64)
    b = torch.tensor(rng.normal(size=d))
    theta = torch.tensor(rng.normal(size=d))
    start = theta.clone()
    true_grad = a @ theta + b
    samples = []
    for seed in range(n):
        g, _, _ = projected_gradient([theta], lambda: float(0.5 * theta @ a @ theta + b @ theta), seed, 1e-3)
        z = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).double()
        samples.append(g * z)
    samples = torch.stack(samples)
    stderr = samples.std(0) / np.sqrt(n)
    assert ((samples.mean(0) - true_grad).abs() < 5 * stderr).all()
    expected_var = true_grad.pow(2).sum() + true_grad.pow(2)
    assert torch.allclose(samples.var(0), expected_var, rtol=0.25)
    assert torch.allclose(theta, start, atol=1e-12)  # probing leaves the parameters where they were


def test_zo_training_descends_a_linear_regression():
    torch.manual_seed(0)
    x, w_true = torch.randn(64, 8), torch.randn(8)
    y = x @ w_true
    w = torch.zeros(8)
    loss = lambda step: float(((x @ w - y) ** 2).mean())  # noqa: E731
    before = loss(0)
    _, losses = zo_train([w], loss, step_seeds(0, 300, 2), lr=0.02, schedule="cosine", eps=1e-3)
    assert loss(0) < 0.05 * before and losses[-1] < losses[0]


@pytest.mark.parametrize("trainable", ["qv", "qparams"])
def test_zo_step_moves_only_the_chosen_set(settings, trainable):
    """The paper's variant (q_proj/v_proj master weights) and quantization-parameter training: a ZO step moves
    exactly that set; the packed codes of the frozen base never change."""
    x = torch.randint(3, 256, (4, 17))
    model = build_quantized(tiny_model(settings), dataclasses.replace(settings.zeroqat, trainable=trainable), [x])
    chosen = trainable_tensors(model, trainable)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        zo_train(list(chosen.values()), lambda t: float(model(input_ids=x, labels=x).loss), step_seeds(0, 2, 1),
                 lr=1e-2, schedule="constant", eps=1e-2)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= set(chosen)
    assert not any(k.endswith("packed") for k in changed)


@pytest.fixture(scope="module")
def phone_setup(settings):
    torch.manual_seed(1)
    model = build_quantized(tiny_model(settings), settings.zeroqat, None, settings.method.lora, 0, 4)
    x = torch.randint(3, 256, (16, 17))
    data = DeviceData(x, x.clone(), x[:4], x[:4].clone())
    work = Work(server_round=1, device_index=0, trainer="zeroqat", local_steps=6, batch_size=4, lr=0.0, rank=4,
                seed=123)
    received = {k: v + np.random.default_rng(0).normal(0, 0.01, v.shape).astype(np.float32)
                for k, v in adapter_arrays(model).items()}  # B != 0 so every factor matters
    return model, data, work, received


def test_zero_learning_rate_restores_the_parameters(settings, phone_setup):
    model, data, work, received = phone_setup
    load_adapter_arrays(model, received)
    cfg = dataclasses.replace(settings.zeroqat, lr=0.0, eps=1e-2, perturbations=2)
    adapter, _, metrics = zeroqat_local_training(model, cfg, data, work)
    assert metrics["zo_grad_abs_mean"] > 0  # the probes did see different losses
    for k, v in received.items():
        np.testing.assert_allclose(adapter[k], v, atol=1e-7, rtol=0)


def test_server_seed_replay_reproduces_the_client_update_exactly(settings, phone_setup):
    model, data, work, received = phone_setup
    cfg = dataclasses.replace(settings.zeroqat, lr=5e-3, seed_upload=True, lr_schedule="linear")
    load_adapter_arrays(model, received)
    adapter, seeds, _ = zeroqat_local_training(model, cfg, data, work)
    in_place = adapter_arrays(model)  # the trained model on the device
    client_delta = {k: adapter[k] - received[k] for k in received}
    # The server side: a FleetFedAvg strategy expands the seed-only reply against the adapter it sent.
    strategy = FleetFedAvg(dataclasses.replace(settings, zeroqat=cfg), devices=[], model_shape=None, concurrency=1)
    strategy._global = received
    strategy._ledger.work[0] = dataclasses.replace(work, device_index=0, trainer="zeroqat")  # asked for seeds
    update = strategy.expand_update(Update(0, 1, dict(seeds), num_examples=16))
    assert update.delta.keys() == client_delta.keys()
    for k in client_delta:
        assert np.array_equal(update.delta[k], client_delta[k]), k
        np.testing.assert_allclose(received[k] + update.delta[k], in_place[k], atol=1e-6, rtol=0)
    assert any(np.abs(d).max() > 1e-5 for d in client_delta.values())  # it did learn something
    seed_bytes = sum(v.nbytes for v in seeds.values())
    assert seed_bytes == work.local_steps * cfg.perturbations * 12
    assert seed_bytes * 400 < sum(v.nbytes for v in received.values())


# ------------------------------------------------------------------ the fleet
def test_simulation_phones_train_forward_only(tmp_path, fast_overrides):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["-m", "simulations.run", "+fleet=8dev_test", "rounds=2", "client.local_steps=3", f"tracking.uri={uri}",
            f"hydra.run.dir={tmp_path / 'out'}", "zeroqat.seed_upload=true", *fast_overrides]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("edgefleet").experiment_id])
    metrics = run.data.metrics
    phones = [c for c in ("pixel_8", "oneplus_12") if f"train/loss/{c}" in metrics]
    jetsons = [c for c in metrics if c.startswith("train/loss/jetson")]
    assert phones and jetsons  # both kinds trained into the same global adapter
    for phone in phones:
        history = client.get_metric_history(run.info.run_id, f"comm/bytes_up/{phone}")
        replies = client.get_metric_history(run.info.run_id, f"fleet/replies/{phone}")
        per_reply = max(h.value / r.value for h, r in zip(history, replies))
        assert per_reply < 2000  # seeds and scalars, not a 600 kB adapter
    assert np.isfinite(metrics["eval/global_ppl"])
