"""Issue 14: the fast path (in-process engine with cohort batching) trains the same adapters as the plain path.

Batching (simulations/batching.py, client/multi_adapter.py) stacks a round's backprop-LoRA (or ZeroQAT) devices
into one batch with one adapter per device; each device's gradient and AdamW step (or SPSA directions and step) are its own, so the
result differs from one-device-at-a-time training only by floating-point reassociation. Stated tolerance: after
2 rounds on +fleet=8dev_test, every adapter tensor within 1e-4 absolute, and the global update (final - initial
adapter) within 1e-3 relative (L2). No timing is asserted here: benchmarks/throughput.py measures speed.
"""

from __future__ import annotations

import numpy as np
import pytest

from runconfig.load import ConfigError, compose
from runconfig.plain import to_plain

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
    from models.base_checkpoint import base_dir, load_base_model
    from models.lora import adapter_arrays, attach_lora
    from simulations import batching

    calls = []
    original = batching.run_tasks
    monkeypatch.setattr(batching, "run_tasks", lambda t, rt, tasks: calls.append(len(tasks)) or original(t, rt, tasks))
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
    (["simulation.backend=inprocess", "simulation.compile=true"], "only simulation.cohort_batching=true builds"),
])
def test_fast_path_config_is_validated(extra, message):
    with pytest.raises(ConfigError, match=message):
        compose(["+fleet=8dev_test", "simulation=ray", "tracking.uri=sqlite:///x.db", *extra])


@pytest.mark.parametrize("extra, message", [
    (["simulation.workers=2"], "simulation.workers"),
    (["simulation.backend=inprocess", "simulation.workers=0"], "must be >= 1"),
])
def test_worker_count_is_validated(extra, message):
    with pytest.raises(ConfigError, match=message):
        compose(["+fleet=8dev_test", "simulation=ray", "tracking.uri=sqlite:///x.db", *extra])


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


@pytest.mark.parametrize("block_rows", [None, 7])
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_token_cross_entropy_matches_torch(dtype_name, block_rows, monkeypatch):
    """The row-block cross-entropy gives F.cross_entropy's per-token losses and logits gradient (fp32 math;
    in bf16 the gradient is rounded to bf16 as autograd's is), ignored rows included; with the blocks a small
    vocabulary gets (128 rows) and with the few-row blocks a large one gets (a block sized to the cache)."""
    import torch

    from models import loss
    from models.loss import token_cross_entropy

    if block_rows is None:
        assert loss.ce_block_rows(97) == loss.CE_MAX_ROWS and loss.ce_block_rows(49152) == 5  # SmolLM2's: 983 KB
    else:
        monkeypatch.setattr(loss, "CE_BLOCK_BYTES", 4 * 97 * block_rows)
        assert loss.ce_block_rows(97) == block_rows

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(300, 97, generator=gen) * 3).to(dtype).requires_grad_(True)  # rows not a block multiple
    target = torch.randint(0, 97, (300,), generator=gen)
    target[::7] = -100
    weights = torch.rand(300, generator=gen)
    ref = torch.nn.functional.cross_entropy(logits.float(), target, ignore_index=-100, reduction="none")
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), logits)
    ours = token_cross_entropy(logits, target)
    (our_grad,) = torch.autograd.grad((ours * weights).sum(), logits)
    assert ours.dtype == torch.float32 and torch.allclose(ours, ref, atol=1e-5, rtol=1e-6)
    assert torch.all(ours[::7] == 0) and torch.all(our_grad[::7] == 0)
    assert our_grad.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 2 ** -8
    assert torch.allclose(our_grad.float(), ref_grad.float(), atol=tol, rtol=tol)
    with pytest.raises(ValueError, match=r"\[N, V\] logits"):
        token_cross_entropy(logits.view(3, 100, 97), target)


def test_frozen_rms_norm_and_multi_lora_linear_match_autograd():
    """FrozenRMSNorm: the same forward as transformers' LlamaRMSNorm, bit for bit, and its input gradient; the
    fused multi-LoRA linear: W x + s B_k A_k x and autograd's gradients for x, A and B (fp32)."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from client.fused_ops import FrozenRMSNorm, SharedCast, multi_lora_linear, use_frozen_rms_norms

    gen = torch.Generator().manual_seed(1)
    norm = LlamaRMSNorm(32, eps=1e-6)
    norm.weight.data = torch.rand(32, generator=gen) + 0.5
    norm.requires_grad_(False)
    holder = torch.nn.Sequential(norm)
    assert use_frozen_rms_norms(holder) == 1 and isinstance(holder[0], FrozenRMSNorm)
    x = torch.randn(3, 5, 32, generator=gen, requires_grad=True)
    assert torch.equal(holder[0](x), norm(x))
    g = torch.randn(3, 5, 32, generator=gen)
    (ours,) = torch.autograd.grad((holder[0](x) * g).sum(), x)
    (ref,) = torch.autograd.grad((norm(x) * g).sum(), x)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-5)
    holder[0].weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="must be frozen"):
        holder[0](x)

    k, rows, d_in, d_out, r, s = 3, 4, 16, 24, 2, 2.0
    base = torch.nn.Linear(d_in, d_out).requires_grad_(False)
    x = torch.randn(k * rows, d_in, generator=gen, requires_grad=True)
    a = torch.randn(k, r, d_in, generator=gen, requires_grad=True)
    b = torch.randn(k, d_out, r, generator=gen, requires_grad=True)
    g = torch.randn(k * rows, d_out, generator=gen)
    out = multi_lora_linear(x, base.weight, base.bias, a, b, s)
    expected = torch.cat([base(x[i * rows:(i + 1) * rows]) + s * x[i * rows:(i + 1) * rows] @ a[i].T @ b[i].T
                          for i in range(k)])
    assert torch.allclose(out, expected, atol=1e-5)
    grads = torch.autograd.grad((out * g).sum(), (x, a, b))
    grads_ref = torch.autograd.grad((expected * g).sum(), (x, a, b))
    for ours, ref in zip(grads, grads_ref):
        assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-5)
    base.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="must be frozen"):
        multi_lora_linear(x, base.weight, base.bias, a, b, s)

    cast = SharedCast()  # q, k and v read one input: one cast, recast after an in-place change
    y = torch.randn(4, 8)
    first = cast(y, torch.bfloat16)
    assert cast(y, torch.bfloat16) is first
    y.mul_(2)
    second = cast(y, torch.bfloat16)
    assert second is not first and torch.equal(second, y.to(torch.bfloat16))
    assert cast(y.clone(), torch.bfloat16) is not second


_RSS_AFTER_FREE = """
import sys, torch
from simulations.host_allocator import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
t = torch.ones(4 * 1024 * 1024)  # 16 MiB
before = rss()
del t
print(before - rss())
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc malloc")
def test_reuse_freed_memory_keeps_freed_blocks_in_the_process(tmp_path):
    """simulation.reuse_freed_memory: a freed 16 MiB tensor stays in the process (no munmap), so the next one
    is not page-faulted in again; with glibc's defaults it is handed back at once. Real processes, real RSS."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    released = {}
    for mode in ("default", "reuse"):
        out = subprocess.run([sys.executable, "-c", _RSS_AFTER_FREE, mode], cwd=repo, capture_output=True, text=True,
                             check=True)
        released[mode] = int(out.stdout.split()[-1])  # KiB given back to the OS by the free
    assert released["default"] > 12 * 1024
    assert released["reuse"] < 1024
    assert compose(["+fleet=8dev_test", "simulation=fast"]).simulation.reuse_freed_memory
    assert not compose(["+fleet=8dev_test", "simulation=ray"]).simulation.reuse_freed_memory
