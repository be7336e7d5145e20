"""Issue 21: every trainer follows the model's device and dtype; the GPU benchmark's entry point.

The CPU cases run everywhere (a model on ``torch.device("meta")`` or with a bf16 base stands in for a GPU: a
tensor created on the CPU next to it is caught); the CUDA cases skip without a GPU and run in
scripts/gpu_check.sh on a lent one. Nothing here imports flwr, mlflow, opacus or hydra at module level (the GPU
machine has none of them).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.accelerator
REPO = Path(__file__).resolve().parents[1]
NEEDS_CUDA = pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")

# Modules the lent GPU machine does not have: importing the benchmark must not need them.
_BLOCKED = ("flwr", "mlflow", "opacus", "hydra", "dp_accounting", "ray")
_BLOCKER = f"""
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {_BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named '{{name}}' (blocked: not on the GPU machine)", name=name)
for name in {_BLOCKED!r}:
    sys.modules[name] = None  # importlib.util.find_spec(name) -> None, as when it is not installed
sys.meta_path.insert(0, Blocked())
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", _BLOCKER + code, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_gpu_benchmark_imports_without_flwr_mlflow_opacus_hydra_and_exits_2_without_cuda():
    """One subprocess with those modules blocked: the benchmark and the trainers import; without CUDA the
    benchmark says so in one line and exits 2."""
    done = _run("import benchmarks.gpu as g, client.trainers, client.multi_adapter, client.runtime\n"
                "import client.trainers.zeroqat, client.trainers.fedspine_prune, client.trainers.lora_dpsgd\n"
                "try:\n    import flwr\nexcept ModuleNotFoundError:\n    print('imported; flwr blocked')\n"
                "import torch\n"
                "sys.exit(0 if torch.cuda.is_available() else g.main(['--quick']))\n")
    assert done.stdout.strip() == "imported; flwr blocked", done.stderr
    import torch

    if not torch.cuda.is_available():
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().count("\n") == 0 and "CUDA" in done.stderr, done.stderr


# ------------------------------------------------------------------------------------------ device/dtype leaks
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

DEVICES = ["meta", pytest.param("cuda", marks=NEEDS_CUDA)]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class MetaReadback(TorchDispatchMode):
    """Lets a trainer run end to end on ``torch.device("meta")``: a meta tensor read back as a Python number
    (``.item()``) or copied to another device (``.cpu()``) reads as ones/zeros. Every other operation runs as
    usual, so a tensor created on the CPU and combined with the model's raises ("not on the expected device")."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        src = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if src is not None and src.device.type == "meta":
            if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
                return False if src.dtype == torch.bool else (1.0 if src.is_floating_point() else 1)
            target = kwargs.get("device")
            if func is torch.ops.aten._to_copy.default and target is not None and torch.device(target).type != "meta":
                return torch.zeros(src.shape, dtype=kwargs.get("dtype") or src.dtype, device=target)
        return func(*args, **kwargs)


def on(device: str):
    """The context a trainer runs in on ``device`` (meta: values read back as ones/zeros)."""
    import contextlib

    return MetaReadback() if device == "meta" else contextlib.nullcontext()


def tiny_config(arch: str = "llama"):
    from transformers import LlamaConfig, Qwen2Config

    cls = Qwen2Config if arch == "qwen2" else LlamaConfig
    return cls(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, max_position_embeddings=64, tie_word_embeddings=True)


def tiny_model(device: str = "cpu", dtype=torch.float32, arch: str = "llama", seed: int = 0):
    """A tiny random base (weights made on the CPU with ``seed``, then moved: the same on every device), its
    frozen parameters stored in ``dtype``."""
    from transformers import AutoModelForCausalLM

    from client.device_detect import hold_frozen_in

    torch.manual_seed(seed)
    if device == "meta":
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(tiny_config(arch))
    else:
        model = AutoModelForCausalLM.from_config(tiny_config(arch)).to(device)
    model.requires_grad_(False)
    model.eval()
    return hold_frozen_in(model, dtype)


def lora_cfg(rank: int = 4):
    from runconfig.schema import LoraConfig

    return LoraConfig(rank=rank, alpha=2.0 * rank, target_modules=list(TARGETS))


def windows(n: int = 8, seq: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 96, (n, seq), generator=torch.Generator().manual_seed(seed))


def assert_follows(model, device: str, base_dtype) -> None:
    """Every parameter and buffer on ``device``; frozen floats in ``base_dtype``; LoRA factors fp32."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert t.device.type == device, f"{name} is on {t.device}, the model on {device}"
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.dtype == torch.float32, f"adapter {name} is {p.dtype}"
        elif p.is_floating_point():
            assert p.dtype == base_dtype, f"base {name} is {p.dtype}, not {base_dtype}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_pruning_and_lora_follow_the_models_device_and_dtype(device, arch):
    from models.lora import attach_lora
    from pruning.prune import prune_model
    from pruning.structure import Dims, Structure, select

    model = tiny_model(device, torch.bfloat16, arch)
    dims = Dims.of(model.config)
    rng = np.random.default_rng(0)
    structure = select([rng.random(dims.num_heads) for _ in range(dims.num_layers)],
                       [rng.random(dims.intermediate_size) for _ in range(dims.num_layers)],
                       Structure.dense(dims), dims, 0.5)
    with on(device):
        prune_model(model, structure, dims)
    assert model.model.layers[0].mlp.gate_proj.out_features == structure.kept_channels() < dims.intermediate_size
    assert_follows(model, device, torch.bfloat16)
    peft = attach_lora(model, lora_cfg(), 0)
    assert_follows(peft, device, torch.bfloat16)
    with on(device):
        logits = peft(input_ids=windows(2).to(device)).logits
    assert logits.device.type == device


@pytest.mark.parametrize("device", DEVICES)
def test_quantization_follows_the_models_device(device):
    from quantization.layers import PackedLinear
    from runconfig.schema import ZeroQATConfig
    from zeroqat.model import build_quantized, calibration_batches

    model = tiny_model(device)
    with on(device):
        model = build_quantized(model, ZeroQATConfig(), calibration_batches(windows(8).to(device), 8), lora_cfg(),
                                0, 4)
        packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
        assert len(packed) == 2 * 7
        assert packed[0].dequantized().device.type == device
    assert_follows(model, device, torch.float32)


class FakeRuntime:
    """What the trainers read of client.runtime.ClientRuntime, around a given base (its dense base)."""

    def __init__(self, base, device: str, precision: str = "fp32", data: list | None = None) -> None:
        from types import SimpleNamespace

        from runconfig.schema import SimulationConfig, ZeroQATConfig

        self.base = base
        self.device = torch.device(device)
        self.settings = SimpleNamespace(
            seed=0, client=SimpleNamespace(precision=precision),
            method=SimpleNamespace(lora=lora_cfg(), fedspine=None),
            zeroqat=ZeroQATConfig(lr=1e-3, eps=1e-2, seed_upload=True), simulation=SimulationConfig())
        self.data = data or [windows(8, seed=i) for i in range(2)]
        self._models = {}

    def cached_model(self, kind: str, key, build):
        from client.runtime import ClientRuntime

        return ClientRuntime.cached_model(self, kind, key, build)  # the runtime's own model cache

    def dense_base(self):
        from client.runtime import hold_base

        return hold_base(self.base, self.device, self.settings.client.precision)  # as the runtime holds it

    def device_data(self, index: int):
        from client.device_data import DeviceData

        x = self.data[index]
        return DeviceData(x, x, x, x)  # on the CPU, like the runtime's

    def autocast(self):
        from client.device_detect import autocast

        return autocast(self.device, self.settings.client.precision)


def work(trainer: str, steps: int = 2, index: int = 0, **extra):
    from protocol.work import Work

    return Work(server_round=1, device_index=index, trainer=trainer, local_steps=steps, batch_size=4, lr=1e-3,
                rank=4, seed=7 + index, extra=extra)


def received_adapter(rank: int = 4) -> dict[str, np.ndarray]:
    """A non-zero adapter of the tiny model's shapes (PEFT's keys), the same on every device."""
    from models.lora import adapter_arrays, attach_lora

    arrays = adapter_arrays(attach_lora(tiny_model("cpu"), lora_cfg(rank), 0))
    rng = np.random.default_rng(1)
    return {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in arrays.items()}


def run_trainer(name: str, device: str, base_dtype=torch.float32, precision: str = "fp32", monkeypatch=None):
    """One trainer's local round on a tiny model on ``device``; returns (adapter, what it is a delta against,
    the trained model or None)."""
    from client.device_detect import autocast
    from models.lora import attach_lora, load_adapter_arrays

    received = received_adapter()
    runtime = FakeRuntime(tiny_model(device, base_dtype), device, precision)
    dev = torch.device(device)
    if name == "fedspine_prune":
        import client.trainers.fedspine_prune as fp
        from pruning.structure import Dims, Structure

        dims = Dims.of(runtime.base.config)
        extra = dict(max_rank=4, alpha=8.0, ratio=0.5, prune_every=1, sparsity_step=0.25, importance_ema=0.5,
                     head_rule="within_groups")
        with on(device), runtime.autocast():  # prune, train, re-prune (twice), train
            result = fp.FedSpinePruneTrainer().train_pruned(runtime, received, Structure.dense(dims).to_arrays(),
                                                            work(name, steps=3, **extra))
        assert result.metrics["prune_steps"] == 2 and result.metrics["ratio"] == 0.5
        return result.adapter, result.reference, None
    if name in ("cohort", "cohort_zeroqat"):  # two devices batched on the multi-adapter model
        from client.trainers import get_trainer
        from client.trainers.base import DeviceTask, run_tasks

        tasks = [DeviceTask(work("lora_backprop", index=i), received) for i in range(2)]
        with on(device):
            if name == "cohort":
                results = run_tasks(get_trainer("lora_backprop"), runtime, tasks)
            else:
                import client.trainers.zeroqat as zq
                from zeroqat.model import build_quantized, calibration_batches

                quantized = build_quantized(runtime.base, runtime.settings.zeroqat,
                                            calibration_batches(windows(8).to(dev), 8), lora_cfg(), 0, 4)
                monkeypatch.setattr(zq, "quantized_model", lambda rt, rank: quantized)
                results = run_tasks(get_trainer("zeroqat"), runtime, tasks)
        assert all(r.metrics["batched_devices"] == 2 for r in results)
        return results[0].adapter, received, None
    if name == "zeroqat":
        from client.trainers.zeroqat import zeroqat_local_training
        from zeroqat.model import build_quantized, calibration_batches

        with on(device):
            model = build_quantized(runtime.base, runtime.settings.zeroqat,
                                    calibration_batches(windows(8).to(dev), 8), lora_cfg(), 0, 4)
            load_adapter_arrays(model, received)
            with autocast(dev, precision):
                adapter, _, metrics = zeroqat_local_training(model, runtime.settings.zeroqat,
                                                             runtime.device_data(0).to_model(model), work(name))
        return adapter, received, model
    from client.trainers import get_trainer

    model = attach_lora(runtime.base, lora_cfg(), 0)
    load_adapter_arrays(model, received)
    extra = {"dp_record_sigma": 0.0, "dp_record_clip": 1e6} if name == "lora_dpsgd" else {}
    with on(device), autocast(dev, precision):
        result = get_trainer(name).train(model, runtime.device_data(0).to_model(model), work(name, **extra))
    return result.adapter, received, model


TRAINER_NAMES = ["lora_backprop", "lora_dpsgd", "zeroqat", "fedspine_prune", "cohort", "cohort_zeroqat"]


@pytest.mark.parametrize("name", TRAINER_NAMES)
def test_each_trainer_runs_on_meta_with_a_bf16_base(name, monkeypatch):
    """On meta every tensor a trainer makes on the CPU and combines with the model's raises; the bf16 base
    stays bf16 and the adapter fp32 through the round."""
    if name == "lora_dpsgd":
        pytest.skip("Opacus draws noise with a generator on the parameters' device; meta has none (the CPU and CUDA "
                    "cases cover DP-SGD)")
    adapter, _, model = run_trainer(name, "meta", torch.bfloat16, "fp32", monkeypatch)
    assert adapter and all(v.dtype == np.float32 for v in adapter.values())
    assert set(adapter) <= set(received_adapter()) or name == "fedspine_prune"
    if model is not None:
        assert_follows(model, "meta", torch.bfloat16)


def relative_error(adapter: dict, reference_adapter: dict, start: dict) -> float:
    """|a - b| / |b - start| over all tensors: the difference relative to the round's update."""
    diff = np.sqrt(sum(float(np.sum((adapter[k] - reference_adapter[k]) ** 2)) for k in reference_adapter))
    step = np.sqrt(sum(float(np.sum((reference_adapter[k] - start[k]) ** 2)) for k in reference_adapter))
    assert step > 0, "the round did not change the adapter"
    return diff / step


# Stated tolerances, relative to the round's update: fp32 on both devices differs by float reassociation only;
# SPSA divides a loss difference by 2 eps, so ZeroQAT's projected gradients amplify it.
CUDA_TOLERANCE = {"zeroqat": 2e-2, "cohort_zeroqat": 2e-2}


@NEEDS_CUDA
@pytest.mark.parametrize("name", TRAINER_NAMES)
def test_each_trainer_gives_the_cpu_result_on_cuda(name, monkeypatch):
    if name == "lora_dpsgd":
        pytest.importorskip("opacus")  # not on the lent GPU machine unless carried
    cpu, start, _ = run_trainer(name, "cpu", torch.float32, "fp32", monkeypatch)
    cuda, cuda_start, _ = run_trainer(name, "cuda", torch.float32, "fp32", monkeypatch)
    assert set(cuda) == set(cpu) and all(np.array_equal(cuda_start[k], start[k]) for k in start)
    assert relative_error(cuda, cpu, start) < CUDA_TOLERANCE.get(name, 2e-3)
    # and as the runtime runs it there: the base stored in the GPU's compute dtype, under its autocast
    from client.device_detect import base_dtype

    half = base_dtype(torch.device("cuda"), "auto")
    assert half in (torch.bfloat16, torch.float16)
    stored = torch.float32 if "zeroqat" in name else half  # ZeroQAT keeps its float rest fp32 (zeroqat.py)
    adapter, _, model = run_trainer(name, "cuda", stored, "auto", monkeypatch)
    assert all(np.isfinite(v).all() and v.dtype == np.float32 for v in adapter.values())
    if model is not None:
        assert_follows(model, "cuda", stored)


@pytest.mark.parametrize("name", ["lora_backprop", "lora_dpsgd", "fedspine_prune", "cohort"])
def test_a_bf16_base_moves_a_rounds_adapter_no_more_than_autocast_does(name, monkeypatch):
    """Issue 21, item 2: the base stored in bf16 (as on a GPU) vs in fp32, both under bf16 autocast (run on the
    CPU). Stated tolerance: the adapters differ by at most 15% of the round's update and at most 1.5x what bf16
    autocast itself changes against full fp32 (measured on this tiny model: 7-12% vs 8-16%; AdamW's first steps
    are sign-like, so any rounding moves small coordinates by a full step)."""
    if name == "lora_dpsgd":
        pytest.importorskip("opacus")
    half, start, model = run_trainer(name, "cpu", torch.bfloat16, "bf16", monkeypatch)
    full, _, _ = run_trainer(name, "cpu", torch.float32, "bf16", monkeypatch)
    exact, _, _ = run_trainer(name, "cpu", torch.float32, "fp32", monkeypatch)
    if model is not None:
        assert_follows(model, "cpu", torch.bfloat16)  # the base stayed bf16, the adapter fp32
    held, autocast_alone = relative_error(half, full, start), relative_error(full, exact, start)
    assert held < 0.15 and held <= 1.5 * autocast_alone, (held, autocast_alone)


def test_gpu_benchmark_points_run_on_the_cpu():
    """The benchmark's per-point code on a tiny shape (the CUDA run is scripts/gpu_check.sh's): a measured time,
    the cost model's prediction, the real trainer's finite loss; a failing point is recorded, not raised."""
    from benchmarks import gpu

    configs = {"tiny": tiny_config("qwen2")}
    points = [("tiny", "lora_backprop", 0.5, 2, 12), ("tiny", "zeroqat", 0.0, 2, 12), ("missing", "zeroqat", 0.0, 2, 12)]
    result = gpu.run(points, torch.device("cpu"), 120, repeats=1, configs=configs, log=lambda line: None)
    ok, bad = result["points"][:2], result["points"][2]
    for row in ok:
        assert row["error"] is None and row["trainer_ok"] and row["measured_s"] > 0 and row["predicted_s"] > 0
        assert row["predicted_bytes"] > 0 and 0 < row["implied_efficiency"]
    assert "FileNotFoundError" in bad["error"]
    assert "| tiny | zeroqat |" in gpu.markdown(result)
