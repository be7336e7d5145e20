"""Analytic cost of a device's local training: matmul FLOPs, memory traffic, bytes on the wire, peak memory.

Deterministic functions of the priced model's shape (fleet/arch.py) and the work (trainer, LoRA rank and
targets, tokens, pruning level per iteration); nothing measured. Device time is then a roofline per matmul kind:

    seconds = sum over matmuls of max(flops / matmul_rate, operand bytes / bandwidth) + elementwise_bytes / bandwidth

with ``matmul_rate`` = peak x efficiency for the precision and trainer (conf/device/*.yaml) and ``bandwidth``
the device's memory bandwidth. What is counted (per token unless said otherwise; T tokens, s sequence length,
d head dim, causal attention averages (s+1)/2 keys per query):

* Forward: every linear 2*in*out; attention QK^T and PV 4*q*d*(s+1)/2; LoRA 2*r*(in+out) per target;
  the LM head 2*h*V.
* Backward with a frozen base (backprop trainers): activation gradients of every linear (2*in*out; layer 0's
  q/k/v skipped: their input needs no gradient), attention twice its forward, LoRA 4*r*(in+out) (dA, dB and
  the two activation gradients), the LM head 2*h*V (no weight gradient); elementwise traffic twice the
  forward's; AdamW reads/writes 7 fp32 values per LoRA parameter per step.
* Forward-only (ZeroQAT): ``forwards`` forwards per step (2 per SPSA direction); each direction perturbs,
  un-perturbs and updates the LoRA tensors in place (z regenerated from its seed four times).
* Quantized base: ``fused`` kernels (a device's W4A8 kernel) read the packed weights and their group scales
  once per matmul and run at the INT8 rate when activations are 8-bit; the ``emulated`` path (this project's
  host implementation, used for calibration) dequantizes each layer to fp32 on every forward and fake-quantizes
  activations per token, all of it memory traffic.
* Elementwise traffic per layer and token (values x activation bytes; counted from the eager implementations,
  see the constants below): two RMSNorms 14h, rotary 10(q+g)d, residual adds 6h, SwiGLU 5c, each LoRA output's
  scale-and-add 5*out; the final norm, the embedding gather and the loss (6V fp32 values).

Not counted: kernel-launch and framework overheads, rebuilding a pruned model between
pruning steps; the calibration benchmark (``python -m benchmarks.cost_model``) measures what that leaves out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet.arch import ArchShape, Kept


@dataclass(frozen=True)
class Kernels:
    """How the work executes: bytes per activation value and per base weight, and the quantized path."""

    act_bytes: int = 2  # fp16 activations on device; 4 for the host's fp32
    weight_bytes: float = 2.0  # bytes per frozen float base weight
    quant: str = "fused"  # fused (device integer kernels) | emulated (dequantize + fake-quant, the host path)


@dataclass(frozen=True)
class Quantized:
    """A packed base (ZeroQAT): weight bits, group size (0: per output channel), activation bits."""

    weight_bits: int
    group_size: int
    act_bits: int


@dataclass(frozen=True)
class Job:
    """One device's local training in a round, as the server sent it."""

    backprop: bool  # False: forward-only (zeroth-order)
    rank: int
    targets: tuple[str, ...]
    batch_size: int
    seq_len: int
    segments: tuple[tuple[int, Kept], ...]  # (iterations, what each layer keeps) in order
    forwards_per_step: int = 1  # forward-only: 2 per SPSA direction
    quantized: Quantized | None = None

    @property
    def steps(self) -> int:
        return sum(n for n, _ in self.segments)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


@dataclass
class WorkCost:
    """Matmuls by kind (name -> [FLOPs, operand bytes]) and the elementwise traffic around them.

    Time is a roofline per matmul kind -- ``max(FLOPs / rate, bytes / bandwidth)``, summed -- so a skinny LoRA
    matmul (rank r: about r/2 FLOPs per byte) is charged as the memory-bound operation it is, not hidden under
    the large matmuls' FLOPs; plus the elementwise traffic over the bandwidth.
    """

    gemms: dict[str, list[float]] = field(default_factory=dict)
    elementwise_bytes: float = 0.0

    @property
    def gemm_flops(self) -> float:
        return sum(f for f, _ in self.gemms.values())

    @property
    def gemm_bytes(self) -> float:
        return sum(b for _, b in self.gemms.values())

    def gemm(self, kind: str, m: float, k: float, n: float, a_bytes: float, b_bytes: float, out_bytes: float,
             count: int = 1) -> None:
        """``count`` (m x k) @ (k x n) matmuls: 2mkn FLOPs each; operands and output read/written once each."""
        entry = self.gemms.setdefault(kind, [0.0, 0.0])
        entry[0] += count * 2 * m * k * n
        entry[1] += count * (m * k * a_bytes + k * n * b_bytes + m * n * out_bytes)

    def __iadd__(self, other: WorkCost) -> WorkCost:
        for kind, (f, b) in other.gemms.items():
            entry = self.gemms.setdefault(kind, [0.0, 0.0])
            entry[0] += f
            entry[1] += b
        self.elementwise_bytes += other.elementwise_bytes
        return self

    def scaled(self, k: float) -> WorkCost:
        return WorkCost({kind: [f * k, b * k] for kind, (f, b) in self.gemms.items()}, self.elementwise_bytes * k)

    def seconds(self, matmul_flops_per_s: float, bytes_per_s: float) -> float:
        return sum(max(f / matmul_flops_per_s, b / bytes_per_s) for f, b in self.gemms.values()) \
            + self.elementwise_bytes / bytes_per_s


@dataclass
class CostBreakdown:
    forward: WorkCost = field(default_factory=WorkCost)
    backward: WorkCost = field(default_factory=WorkCost)
    update: WorkCost = field(default_factory=WorkCost)  # optimizer step / ZO perturbations

    def total(self) -> WorkCost:
        out = WorkCost()
        for part in (self.forward, self.backward, self.update):
            out += part
        return out


def _packed_bytes(numel: int, quantized: Quantized) -> float:
    groups = numel / quantized.group_size if quantized.group_size else 0.0  # per-channel scales: negligible
    return numel * quantized.weight_bits / 8 + groups * 4  # packed codes + fp16 scale and zero per group


def _weight_bytes_each(kernels: Kernels, quantized: Quantized | None) -> float:
    """Bytes per base weight a matmul reads: packed codes with fused kernels, else a float weight (the emulated
    path multiplies by the fp32 weight it just dequantized)."""
    if quantized is not None and kernels.quant == "fused":
        return quantized.weight_bits / 8 + (4 / quantized.group_size if quantized.group_size else 0.0)
    return kernels.weight_bytes


# Elementwise values moved per element (reads + writes), counted from the eager implementations the trainers
# run (transformers' Llama/Qwen2 layers, PEFT's LoRA layer): RMSNorm = pow, mean, x*rsqrt, *weight = 7;
# rotary = *cos, neg and cat of rotate_half, *sin, add = 10; a residual add = 3; SwiGLU = silu 2 + mul 3 = 5;
# LoRA's output scale-and-add = 2 + 3 = 5; the loss over fp32 logits = 6.
RMSNORM, ROTARY, RESIDUAL, SWIGLU, LORA_ADD, LOSS = 7, 10, 3, 5, 5, 6
# Emulated dequantization per weight, bytes: unpack (packed read, shift, mask: ~3.5), to float (1 + 4), minus
# zero (4 + 4), times scale (4 + 4); the grouped reshape is a view and the matmul reads the result in place.
EMULATED_DEQUANT_BYTES = 24.5


def forward_cost(shape: ArchShape, kept: Kept, rank: int, targets: tuple[str, ...], tokens: int, seq_len: int,
                 kernels: Kernels, quantized: Quantized | None = None) -> WorkCost:
    """One forward pass over ``tokens`` tokens (in sequences of ``seq_len``)."""
    t, ab, h, d = tokens, kernels.act_bytes, shape.hidden_size, shape.head_dim
    wb = _weight_bytes_each(kernels, quantized)
    layer = WorkCost()
    for name, (i, o) in shape.projections(kept).items():
        layer.gemm(name, t, i, o, ab, wb, ab)
        if quantized is not None and kernels.quant == "emulated":
            layer.elementwise_bytes += i * o * EMULATED_DEQUANT_BYTES  # every forward, before the matmul
            # smoothing division (2 passes) and per-token fake quantization (min, max, 6 read/write pairs)
            layer.elementwise_bytes += t * i * 4 * (2 + 2 + 12) if quantized.act_bits < 16 else t * i * 4 * 2
        elif quantized is not None and quantized.act_bits < 16:
            layer.elementwise_bytes += t * i * (ab + 1)  # quantize activations to int8 once
        if name in targets:
            layer.gemm(f"lora_A.{name}", t, i, rank, ab, 4, ab)
            layer.gemm(f"lora_B.{name}", t, rank, o, ab, 4, ab)
            layer.elementwise_bytes += LORA_ADD * t * o * ab
    q, g = kept.q_heads * d, kept.kv_heads * d
    # QK^T and PV per head, causal: (s + 1) / 2 keys per query on average; reads q, k, v, writes the output
    layer.gemms["attention"] = [4 * t * q * (seq_len + 1) / 2, t * (2 * q + 2 * g) * ab]
    layer.elementwise_bytes += t * (2 * RMSNORM * h + ROTARY * (q + g) + 2 * RESIDUAL * h
                                    + SWIGLU * kept.channels) * ab
    c = layer.scaled(shape.num_layers)
    v = shape.vocab_size
    c.gemm("lm_head", t, h, v, ab, kernels.weight_bytes, ab)
    c.elementwise_bytes += t * (RMSNORM * h + 2 * h) * ab + LOSS * t * v * 4  # final norm, embedding gather, loss
    return c


def backward_cost(shape: ArchShape, kept: Kept, rank: int, targets: tuple[str, ...], tokens: int, seq_len: int,
                  kernels: Kernels) -> WorkCost:
    """Activation and LoRA gradients of one step with a frozen base (see the module docstring)."""
    fwd = forward_cost(shape, kept, rank, targets, tokens, seq_len, kernels)
    t, ab, d, L = tokens, kernels.act_bytes, shape.head_dim, shape.num_layers
    c = WorkCost(elementwise_bytes=2 * fwd.elementwise_bytes)
    for name, (i, o) in shape.projections(kept).items():
        # dX = dY W in every layer but where the input needs no gradient: layer 0's q/k/v read the embeddings
        layers = L - 1 if name in ("q_proj", "k_proj", "v_proj") else L
        c.gemm(f"dx.{name}", t, o, i, ab, kernels.weight_bytes, ab, count=layers)
        if name in targets:  # dB = dY^T (xA), d(xA) = dY B, dA = d(xA)^T x, dx = d(xA) A
            c.gemm(f"dB.{name}", o, t, rank, ab, ab, 4, count=L)
            c.gemm(f"dxA.{name}", t, o, rank, ab, 4, ab, count=L)
            c.gemm(f"dA.{name}", rank, t, i, ab, ab, 4, count=L)
            c.gemm(f"dx_lora.{name}", t, rank, i, ab, 4, ab, count=layers)
    q, g = kept.q_heads * d, kept.kv_heads * d
    c.gemms["attention"] = [L * 2 * 4 * t * q * (seq_len + 1) / 2, L * 2 * t * (2 * q + 2 * g) * ab]
    c.gemm("dx.lm_head", t, shape.vocab_size, shape.hidden_size, ab, kernels.weight_bytes, ab)
    return c


def job_cost(shape: ArchShape, job: Job, kernels: Kernels) -> CostBreakdown:
    """The whole round's local training: every segment's iterations at that segment's kept structure."""
    out = CostBreakdown()
    t = job.tokens_per_step
    for iterations, kept in job.segments:
        lora = shape.lora_params(kept, job.rank, list(job.targets))
        fwd = forward_cost(shape, kept, job.rank, job.targets, t, job.seq_len, kernels, job.quantized)
        out.forward += fwd.scaled(iterations * job.forwards_per_step)
        if job.backprop:
            out.backward += backward_cost(shape, kept, job.rank, job.targets, t, job.seq_len, kernels) \
                .scaled(iterations)
            out.update += WorkCost(elementwise_bytes=7 * 4 * lora * iterations)  # AdamW
        else:
            directions = max(1, job.forwards_per_step // 2)
            out.update += WorkCost(elementwise_bytes=4 * 4 * 4 * lora * directions * iterations)
    return out


# ---------------------------------------------------------------------------------------------- bytes
def adapter_bytes(shape: ArchShape, kept: Kept, rank: int, targets: tuple[str, ...], wire_bytes: int) -> int:
    """A LoRA adapter (or its delta) of this structure and rank on the wire."""
    return shape.lora_params(kept, rank, list(targets)) * wire_bytes


def structure_bytes(shape: ArchShape) -> int:
    """A pruned device's kept-structure masks (uint8 per head and per channel, every layer)."""
    return shape.num_layers * (shape.num_heads + shape.intermediate_size)


# --------------------------------------------------------------------------------------------- memory
def training_memory(shape: ArchShape, job: Job, kernels: Kernels) -> int:
    """Peak bytes of the job: base weights (pruned, possibly packed), trainable state, and the activations
    a backward pass keeps (per layer and token: norm inputs/outputs 4h, q/k/v (q+2g)d, attention output q*d
    and its log-sum-exp, SwiGLU's three c, each LoRA target's r) or, forward-only, one layer's working set;
    plus fp32 logits (and their gradient). The largest over the job's segments (the first: pruning only
    shrinks it)."""
    return max(_segment_memory(shape, kept, job, kernels) for _, kept in job.segments)


def _segment_memory(shape: ArchShape, kept: Kept, job: Job, kernels: Kernels) -> int:
    h, d, ab = shape.hidden_size, shape.head_dim, kernels.act_bytes
    layer_linears = sum(i * o for i, o in shape.projections(kept).values())
    rest = shape.num_params(kept) - shape.num_layers * layer_linears
    stored = _packed_bytes(layer_linears, job.quantized) if job.quantized else layer_linears * kernels.weight_bytes
    weights = shape.num_layers * stored + rest * kernels.weight_bytes
    lora = shape.lora_params(kept, job.rank, list(job.targets))
    t = job.tokens_per_step
    q, g, ch = kept.q_heads * d, kept.kv_heads * d, kept.channels
    logits = t * shape.vocab_size * 4
    if job.backprop:
        saved = 4 * h + (q + 2 * g) + q + kept.q_heads + 3 * ch + job.rank * len(job.targets)
        return int(weights + lora * 16 + shape.num_layers * t * saved * ab + 2 * logits)
    working = 3 * h + q + 2 * g + 3 * ch + kept.q_heads * job.seq_len  # one layer at a time
    return int(weights + lora * 4 + t * working * ab + logits)
