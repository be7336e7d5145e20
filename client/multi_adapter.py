"""Multi-adapter batching: K devices' LoRA adapters on one shared frozen base, one forward for all of them.

As multi-LoRA serving systems do (Punica, S-LoRA), the in-process engine (``simulation=fast``) stacks K devices'
batches into one batch of K x batch_size windows and their adapters into [K, r, in] / [K, out, r] tensors: every
adapted linear layer computes ``W x + s * B_k (A_k x)`` for the rows of device k (one GEMM for the base, two
batched GEMMs for the adapters). A :class:`MultiLoraModel` is what the trainers (client/trainers/) train when
they are handed K > 1 devices; with one device they train the PEFT model itself. Either way the trainer's code
is the same: it sees an adapter set (:class:`client.trainers.base.AdapterSet`) of K devices.

Each device's loss is its own mean next-token loss (models/loss.py), and a backprop step minimises their sum: a
device's adapter only enters its own rows, so each gets exactly its own gradient, and AdamW (element-wise, same
step count, same lr, no weight decay) updates each device's slice exactly as its own optimizer would. ZeroQAT's
SPSA steps perturb each device's slice along its own seeded directions. The results equal one-device training up
to floating-point reassociation (tests/test_structure.py, tests/test_throughput.py state the tolerances).
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from torch import nn

from client.device_detect import attention_for, autocast_dtype
from client.fused_ops import SharedCast, add_multi_lora, multi_lora_linear, use_frozen_rms_norms
from models.lora import peft_config

logger = logging.getLogger(__name__)

PEFT_PREFIX = "base_model.model."  # PEFT's adapter keys: this prefix, the module path, .lora_A.weight
COMPILED_VARIANTS = 64  # compiled variants of a decoder layer kept per process (compile_decoder_layers)


class MultiLoraLinear(nn.Module):
    """A frozen linear layer with one LoRA adapter per group of rows (K groups of equal size)."""

    def __init__(self, base: nn.Module, scaling: float, cast: SharedCast | None = None) -> None:
        super().__init__()
        self.base = base
        self.scaling = scaling
        self.cast = cast or SharedCast()  # shared by the model's layers: layers reading one input cast it once
        self.lora_A: torch.Tensor | None = None  # [K, r, in]
        self.lora_B: torch.Tensor | None = None  # [K, out, r]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = isinstance(self.base, nn.Linear)
        if dense and torch.amp.is_autocast_available(x.device.type) and torch.is_autocast_enabled(x.device.type):
            # autocast would cast x for the base matmul and again for the adapter's (and q, k, v each): once
            x = self.cast(x, torch.get_autocast_dtype(x.device.type))
        if dense and torch.is_grad_enabled() and self.lora_A.requires_grad:
            return multi_lora_linear(x, self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.scaling)
        # no gradient (evaluation, ZeroQAT) or a quantized base: the same expression, autograd's way
        return add_multi_lora(self.base(x), x, self.lora_A, self.lora_B, self.scaling)[0]


class MultiLoraModel:
    """A private copy of a base model whose adapted layers are :class:`MultiLoraLinear`, keyed by the adapter
    key prefix (PEFT's names). :meth:`load` makes it an adapter set of K devices (``count``, ``parameters``,
    ``per_device``, ``arrays``); :meth:`release` drops them."""

    def __init__(self, model: nn.Module, layers: dict[str, MultiLoraLinear], cast: SharedCast) -> None:
        self.model = model
        self.layers = layers
        self.cast = cast
        self.count = 0

    @classmethod
    def from_dense(cls, base: nn.Module, targets: tuple[str, ...], scaling: float) -> MultiLoraModel:
        """Wrap every ``targets`` linear layer of a copy of the dense base (backprop LoRA)."""
        model = copy.deepcopy(base)
        model.requires_grad_(False)
        cast, layers = SharedCast(), {}
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                if child_name in targets and isinstance(child, nn.Linear):
                    setattr(module, child_name, wrapped := MultiLoraLinear(child, scaling, cast))
                    layers[f"{PEFT_PREFIX}{name}.{child_name}" if name else f"{PEFT_PREFIX}{child_name}"] = wrapped
        return cls(model, layers, cast)

    @classmethod
    def from_peft(cls, peft_model: nn.Module) -> MultiLoraModel:
        """Replace each PEFT LoRA layer of a copy of ``peft_model`` (ZeroQAT's quantized one) by a
        :class:`MultiLoraLinear` over the same base layer (activations are quantized per token, so a device's
        rows see exactly what they would see alone)."""
        from peft.tuners.lora import LoraLayer

        model = copy.deepcopy(peft_model)
        cast, layers = SharedCast(), {}
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, LoraLayer):
                    setattr(module, child_name, wrapped := MultiLoraLinear(child.base_layer,
                                                                           float(child.scaling["default"]), cast))
                    layers[f"{name}.{child_name}"] = wrapped
        return cls(model, layers, cast)

    def load(self, adapters: list[dict[str, np.ndarray]], trainable: bool = True) -> MultiLoraModel:
        """Stack the devices' adapters (PEFT key names) into [K, ...] fp32 tensors next to the base's weights."""
        expected = {f"{path}.lora_{ab}.weight" for path in self.layers for ab in "AB"}
        for adapter in adapters:
            if set(adapter) != expected:
                raise ValueError(f"adapter keys do not match the model: missing {sorted(expected - set(adapter))[:3]}"
                                 f", unexpected {sorted(set(adapter) - expected)[:3]}")
        for path, layer in self.layers.items():
            device = next(layer.base.parameters(), None)
            device = device.device if device is not None else next(layer.base.buffers()).device
            for ab in "AB":
                stacked = np.stack([np.asarray(ad[f"{path}.lora_{ab}.weight"], dtype=np.float32) for ad in adapters])
                setattr(layer, f"lora_{ab}", torch.from_numpy(stacked).to(device).requires_grad_(trainable))
        self.count = len(adapters)
        return self

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The forward of K equal groups of rows. No KV cache: a forward-only batch of many devices would keep
        every layer's keys and values alive until its logits are freed."""
        return self.model(input_ids=x, use_cache=False).logits

    def stacked(self) -> dict[str, torch.Tensor]:
        """Adapter key -> its [K, ...] tensor, in sorted key order (the order ZeroQAT draws its directions in)."""
        out = {}
        for path, layer in self.layers.items():
            out[f"{path}.lora_A.weight"], out[f"{path}.lora_B.weight"] = layer.lora_A, layer.lora_B
        return {k: out[k] for k in sorted(out)}

    def parameters(self) -> list[torch.Tensor]:
        return list(self.stacked().values())

    def per_device(self) -> list[list[torch.Tensor]]:
        """Each device's slices of the stacked tensors (views), in sorted key order."""
        stacked = list(self.stacked().values())
        return [[t[k] for t in stacked] for k in range(self.count)]

    def arrays(self) -> list[dict[str, np.ndarray]]:
        out: list[dict[str, np.ndarray]] = [{} for _ in range(self.count)]
        for key, t in self.stacked().items():
            values = t.detach().float().cpu().numpy()
            for k in range(self.count):
                out[k][key] = values[k].copy()
        return out

    def release(self) -> None:
        """Drop the loaded adapters (the next load brings its own)."""
        for layer in self.layers.values():
            layer.lora_A = layer.lora_B = None
        self.cast.clear()
        self.count = 0


def cast_for_autocast(model: nn.Module, linears: list[nn.Module], dtype: torch.dtype, device: torch.device) -> None:
    """Store frozen linear weights in the autocast dtype once, instead of autocast casting them on every call.

    Autocast casts an fp32 weight to ``dtype`` before each matmul (``client.device_detect.autocast`` runs it
    without its cast cache), so the stored cast gives the same matmul inputs; embeddings and norms keep their
    fp32 weights. A weight shared with the input embedding (tied) is given its own copy. Attention: :func:`attention_for`.
    """
    for linear in linears:
        linear.weight = nn.Parameter(linear.weight.detach().to(dtype).clone(), requires_grad=False)
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias.detach().to(dtype).clone(), requires_grad=False)
    attention_for(model, device, dtype)


def compiler_missing(device: torch.device) -> str | None:
    """What torch.compile's inductor lacks here to generate code for ``device``, or None: a C++ compiler on a CPU,
    Triton on a GPU (JetPack's torch builds, for one, ship without it)."""
    if device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler
        from torch._inductor.exc import InvalidCxxCompiler

        try:
            get_cpp_compiler()
        except InvalidCxxCompiler:
            return "a C++ compiler (g++, or set CXX)"
        return None
    from torch.utils._triton import has_triton

    return None if has_triton() else "Triton"


def compile_decoder_layers(model: nn.Module, device: torch.device) -> int:
    """``torch.compile`` each decoder layer of ``model`` in place (regional compilation: the layers share one
    compiled graph, so the compile cost is one layer's, not the model's); returns how many (0, with a warning,
    where this host cannot compile: :func:`compiler_missing`).

    What it buys on a CPU is fusion: the casts, rotary embedding, norms, activation and fake quantization between
    the GEMMs become a few generated loops instead of one pass over the activations each. What it costs is a
    one-off compile per process and mode (training, no-grad) and one more when the batch's device count first
    changes (docs/benchmarks/step_anatomy.md). Shapes are static (``dynamic=False``): inductor's dynamic-shape code
    for these layers ran ~6x slower on a CPU than eager, and its compile took minutes."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    missing = compiler_missing(device)
    if missing:
        logger.warning("simulation.compile=true needs %s for torch.compile on this device; none found, so the "
                       "batched models run uncompiled", missing)
        return 0

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.compile(dynamic=False)
    # Every decoder layer class shares one code object, hence one limit on its compiled variants: (device count K)
    # x (first layer / later layers: input without / with gradient) x (training / no-grad / the quantized model).
    # Past torch's default of 8 the rest would run eager, silently; this worker process compiles them all.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, COMPILED_VARIANTS)
    return len(layers)


def dense_multi_lora(runtime, rank: int) -> MultiLoraModel:
    """The runtime's multi-adapter copy of its dense base, for backprop LoRA at ``rank`` (built once)."""
    s = runtime.settings
    cfg = peft_config(s.method.lora, rank)
    scaling = cfg.lora_alpha / (cfg.r ** 0.5 if cfg.use_rslora else cfg.r)

    def build() -> MultiLoraModel:
        holder = MultiLoraModel.from_dense(runtime.dense_base(), tuple(s.method.lora.target_modules), scaling)
        use_frozen_rms_norms(holder.model)  # same forward, a leaner backward (client/fused_ops.py)
        dtype = autocast_dtype(runtime.device, s.client.precision)
        if dtype is not None:
            frozen = [layer.base for layer in holder.layers.values()] + [holder.model.get_output_embeddings()]
            cast_for_autocast(holder.model, frozen, dtype, runtime.device)
        if s.simulation.compile:
            compile_decoder_layers(holder.model, runtime.device)
        return holder

    return runtime.cached_model("multi_lora", (rank, scaling), build)


def quantized_multi_lora(runtime, quantized: nn.Module, rank: int) -> MultiLoraModel:
    """The runtime's multi-adapter copy of ZeroQAT's quantized model at ``rank`` (built once): the packed base
    layers hold their dequantized weights (forward-only: nothing else changes them)."""
    from quantization.layers import PackedLinear

    def build() -> MultiLoraModel:
        holder = MultiLoraModel.from_peft(quantized)
        dtype = autocast_dtype(runtime.device, runtime.settings.client.precision)
        for layer in holder.layers.values():
            if isinstance(layer.base, PackedLinear):
                layer.base.hold_dequantized(dtype)
        if dtype is not None:
            cast_for_autocast(holder.model, [holder.model.get_output_embeddings()], dtype, runtime.device)
        if runtime.settings.simulation.compile:
            compile_decoder_layers(holder.model, runtime.device)
        return holder

    return runtime.cached_model("multi_lora_quantized", rank, build)
