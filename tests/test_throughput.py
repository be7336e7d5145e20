"""Issue 14: the fast path (in-process engine with cohort batching) trains the same adapters as the plain path.

Cohort batching (client/cohort.py) stacks a round's backprop-LoRA (or ZeroQAT) devices into one batch with one
adapter per device; each device's gradient and AdamW step (or SPSA directions and step) are its own, so the
result differs from one-device-at-a-time training only by floating-point reassociation. Stated tolerance: after
2 rounds on +fleet=8dev_test, every adapter tensor within 1e-4 absolute, and the global update (final - initial
adapter) within 1e-3 relative (L2). No timing is asserted here: benchmarks/throughput.py measures speed.
"""

from __future__ import annotations

import numpy as np
import pytest

from runconfig.load import ConfigError, compose, to_plain

pytestmark = pytest.mark.throughput

ABS_TOL = 1e-4
REL_TOL = 1e-3


def _overrides(fast_overrides, tmp_path, name, extra):
    return ["+fleet=8dev_test", "rounds=2", "client.local_steps=3", "federation.eval_cohort_size=3",
            f"tracking.uri=sqlite:///{tmp_path / name}.db", f"output_dir={tmp_path / name}",
            "checkpoint.enabled=false", "tracking.log_adapter=false", *fast_overrides, *extra]


def _final_adapter(overrides, monkeypatch=None):
    from protocol.messages import from_array_record
    from server.federation import run_server
    from simulations.inprocess import InProcessGrid
    from simulations.launch import quiet_frameworks

    quiet_frameworks()
    settings = compose(overrides)
    result = run_server(InProcessGrid(to_plain(settings), settings.fleet.size), settings, show_progress=False)
    return from_array_record(result.arrays), result


@pytest.mark.parametrize("trainer", ["lora_backprop", "zeroqat"])
def test_cohort_batching_gives_the_plain_paths_adapters(fast_overrides, tmp_path, monkeypatch, trainer):
    trainers = [f"client.trainer={trainer}"]  # every device of the cohort is batchable
    from client import cohort
    from models.base_checkpoint import base_dir, load_base_model
    from models.lora import adapter_arrays, attach_lora

    calls = []
    name = "train_cohort_zeroqat" if trainer == "zeroqat" else "train_cohort"
    original = getattr(cohort, name)
    monkeypatch.setattr(cohort, name, lambda rt, w, r: calls.append(len(w)) or original(rt, w, r))
    plain, plain_result = _final_adapter(_overrides(fast_overrides, tmp_path, "plain", ["simulation.backend=inprocess",
                                                                                       *trainers]))
    assert not calls
    fast, fast_result = _final_adapter(_overrides(fast_overrides, tmp_path, "fast", [
        "simulation.backend=inprocess", "simulation.cohort_batching=true", *trainers]))
    assert calls and max(calls) >= 2  # devices really were batched
    settings = compose(_overrides(fast_overrides, tmp_path, "x", trainers))
    initial = adapter_arrays(attach_lora(load_base_model(base_dir(settings)), settings.method.lora, settings.seed))
    assert set(plain) == set(fast) == set(initial)
    num = sum(float(np.sum((fast[k] - plain[k]) ** 2)) for k in plain)
    den = sum(float(np.sum((plain[k] - initial[k]) ** 2)) for k in plain)
    assert den > 0  # the adapters did move
    assert np.sqrt(num / den) < REL_TOL
    assert max(float(np.abs(fast[k] - plain[k]).max()) for k in plain) < ABS_TOL
    # the learning is the same: per-round train loss and federated/central evaluation agree
    for rnd, metrics in plain_result.train_metrics_clientapp.items():
        assert fast_result.train_metrics_clientapp[rnd]["train/loss"] == pytest.approx(metrics["train/loss"], rel=1e-4)
    for rnd, metrics in plain_result.evaluate_metrics_clientapp.items():
        assert fast_result.evaluate_metrics_clientapp[rnd]["eval/fed_loss"] == pytest.approx(
            metrics["eval/fed_loss"], rel=1e-4)
    ppl = plain_result.evaluate_metrics_serverapp[2]["eval/global_ppl"]
    assert fast_result.evaluate_metrics_serverapp[2]["eval/global_ppl"] == pytest.approx(ppl, rel=1e-4)


@pytest.mark.parametrize("extra, message", [
    (["simulation.cohort_batching=true"], "needs simulation.backend=inprocess"),
    (["simulation.backend=inprocess", "simulation.cohort_batching=true", "cost.clock=host_scaled"],
     "cost.clock=analytic"),
    (["simulation.backend=inprocess", "simulation.cohort_batching=true", "method.lora.dropout=0.1"],
     "no LoRA dropout"),
    (["simulation.backend=grpc"], "simulation.backend"),
    (["simulation.backend=inprocess", "simulation.ray_address=head:6379"], "starts no Ray"),
])
def test_fast_path_config_is_validated(extra, message):
    with pytest.raises(ConfigError, match=message):
        compose(["+fleet=8dev_test", "tracking.uri=sqlite:///x.db", *extra])


@pytest.mark.parametrize("extra, message", [
    (["simulation.workers=2"], "simulation.workers"),
    (["simulation.backend=inprocess", "simulation.workers=0"], "must be >= 1"),
])
def test_worker_count_is_validated(extra, message):
    with pytest.raises(ConfigError, match=message):
        compose(["+fleet=8dev_test", "tracking.uri=sqlite:///x.db", *extra])


def test_fast_preset_workers_and_bf16(fast_overrides, tmp_path):
    """``simulation=fast``: the batched cohorts dealt out to 2 worker processes give the one-process adapters
    (fp32, same tolerance); in bf16 (the preset as shipped) the global perplexity stays within 1%."""
    import os

    from protocol.messages import from_array_record
    from server.federation import run_server
    from simulations.inprocess import InProcessGrid

    one, _ = _final_adapter(_overrides(fast_overrides, tmp_path, "one", [
        "simulation.backend=inprocess", "simulation.cohort_batching=true"]))
    results = {}
    for name, extra in (("two", ["client.precision=fp32"]), ("bf16", [])):
        settings = compose(_overrides(fast_overrides, tmp_path, name, ["simulation=fast", *extra]))
        assert settings.simulation.workers == 2
        with InProcessGrid(to_plain(settings), settings.fleet.size) as grid:
            results[name] = run_server(grid, settings, show_progress=False)
            workers = {p.pid for p in grid._pool._processes.values()}  # the work ran in worker processes
        assert len(workers) == 2 and os.getpid() not in workers
    two = from_array_record(results["two"].arrays)
    assert max(float(np.abs(two[k] - one[k]).max()) for k in one) < ABS_TOL
    ppl = {n: r.evaluate_metrics_serverapp[2]["eval/global_ppl"] for n, r in results.items()}
    assert ppl["bf16"] == pytest.approx(ppl["two"], rel=0.01)


def test_forward_only_fake_quantization_matches_the_autograd_path():
    """The in-place activation fake-quantization (no gradient) gives exactly the out-of-place values."""
    import torch

    from quantization.quantizers import fake_quant_activation

    x = torch.randn(6, 40, 96) * torch.linspace(0.1, 4, 96)
    with torch.no_grad():
        fast = fake_quant_activation(x, 8)
    slow = fake_quant_activation(x.clone().requires_grad_(True), 8).detach()
    assert torch.equal(fast, slow)
    assert not torch.equal(fast, x)  # it did quantize


def test_held_dequantized_weight_gives_the_same_forward():
    import torch

    from quantization.layers import PackedLinear

    torch.manual_seed(0)
    layer = PackedLinear(torch.nn.Linear(128, 64), bits=4, group_size=64, a_bits=8)
    x = torch.randn(5, 128)
    with torch.no_grad():
        unpacked_each_call = layer(x)
        layer.hold_dequantized()
        held = layer(x)
    assert torch.equal(held, unpacked_each_call)
    trainable = PackedLinear(torch.nn.Linear(128, 64), bits=4, group_size=64, a_bits=8, trainable_qparams=True)
    with pytest.raises(ValueError, match="frozen quantization parameters"):
        trainable.hold_dequantized()


def test_autocast_sees_every_update_of_the_adapter():
    """client.precision=bf16/fp16: a whole local round runs in one autocast region; the adapter's weights change
    every step, so the forward must use the current ones (torch's default autocast would reuse its first cast
    of a trainable leaf for the whole region, and SPSA perturbations would be invisible)."""
    import torch

    from client.device_detect import autocast

    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with autocast(torch.device("cpu"), "bf16"):
        first = layer(x)
        with torch.no_grad():
            layer.weight.add_(1.0)
        second = layer(x)
    assert first.dtype == torch.bfloat16
    assert not torch.equal(first, second)
