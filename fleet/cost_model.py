"""Analytic cost of a device's local training: matmul FLOPs, memory traffic, bytes on the wire, peak memory.

Deterministic functions of the priced model's shape (fleet/arch.py) and the work (trainer, LoRA rank and
targets, tokens, pruning level per iteration); nothing is measured at pricing time (the operator counts and the
allocator constants below were counted or measured once). Device time is a roofline per matmul kind plus a
per-operator overhead:

    seconds = sum over matmuls of max(flops / matmul_rate, operand bytes / bandwidth) + elementwise_bytes / bandwidth
              + operators x operator_s

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

* Per-step overhead: every operator a step dispatches costs a fixed time on top of its roofline (framework
  dispatch and kernel launch; at the fleet's token counts it is most of a small model's step). Operators are
  counted from the structure (per layer, per LoRA target, per trainable tensor, per model) with constants
  counted once on the eager implementations (``OPS`` below); ``seconds(..., operator_s=...)`` charges them at
  the device class's per-operator cost (conf/device/*.yaml ``operator_us``).

Not counted: rebuilding a pruned model between pruning steps; the calibration benchmark
(``python -m benchmarks.cost_model``) measures what the model leaves out.

Size (~440 lines): time, traffic, bytes and memory are one model of one step; they share the operator and tensor
counts, so they are kept together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet.arch import PROJECTIONS, ArchShape, Kept


@dataclass(frozen=True)
class Kernels:
    """How the work executes: bytes per activation value and per base weight, and the quantized path."""

    act_bytes: int = 2  # compute dtype: 2 = fp16/bf16 autocast on a device; 4 = the host's fp32 (no autocast)
    weight_bytes: float = 2.0  # bytes per frozen float base weight as stored (> act_bytes: autocast copies them)
    quant: str = "fused"  # fused (device integer kernels) | emulated (dequantize + fake-quant, the host path)
    attention: str = "sdpa"  # sdpa (fused: saves output + log-sum-exp) | eager (saves the score matrices)
    foreach_optimizer: bool = False  # AdamW's multi-tensor path (CUDA's default) instead of the per-tensor loop
    allocator_bytes: float = 0.0  # the allocator's fixed working set at the peak (see ALLOCATOR_* below)
    allocator_fraction: float = 0.0  # ... and its share of the step's transient bytes (rounding, fragmentation)

    @property
    def mixed(self) -> bool:
        """Autocast to a 2-byte compute dtype (the base may still be stored wider)."""
        return self.act_bytes < 4


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
    keeps_dense_base: bool = False  # the trainer holds the dense base next to the pruned model it trains (FedSpine)

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
    operators: float = 0.0  # operators dispatched (each a fixed framework/launch cost; see OPS)

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
        self.operators += other.operators
        return self

    def scaled(self, k: float) -> WorkCost:
        return WorkCost({kind: [f * k, b * k] for kind, (f, b) in self.gemms.items()}, self.elementwise_bytes * k,
                        self.operators * k)

    def seconds(self, matmul_flops_per_s: float, bytes_per_s: float, operator_s: float = 0.0) -> float:
        """Roofline seconds, plus ``operator_s`` per dispatched operator (the per-step overhead term; 0 leaves
        it out, the clock before it existed)."""
        return sum(max(f / matmul_flops_per_s, b / bytes_per_s) for f, b in self.gemms.values()) \
            + self.elementwise_bytes / bytes_per_s + self.operators * operator_s


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

# Operators one step dispatches, counted once with a TorchDispatchMode (every aten call, views included: each
# pays the framework's dispatch, and on a GPU most launch a kernel) on transformers' Llama layer with PEFT LoRA
# (torch 2.x, transformers 5.x, SDPA attention), differencing models of 1-3 layers and 1 or 7 LoRA targets.
# "fp32": no autocast; "mixed": autocast to a 2-byte dtype (its casts are operators too).
# layer / target / model: per decoder layer, extra per LoRA target in a layer, once per pass (embedding, final
# norm, LM head, loss; negative in backward: layer 0 needs no input gradients).
OPS = {
    "fp32": {"fwd_layer": 77, "fwd_target": 10, "fwd_model": 41, "bwd_layer": 98, "bwd_target": 20, "bwd_model": -14},
    "mixed": {"fwd_layer": 81, "fwd_target": 14, "fwd_model": 46, "bwd_layer": 102, "bwd_target": 24,
              "bwd_model": -19},
}
EAGER_ATTENTION_OPS = (24, 22)  # extra per layer, forward and backward, with transformers' eager attention
EMULATED_QUANT_OPS = 199  # extra per layer forward on the host's emulated W4A8 base (unpack, dequantize, fake-quant)
FUSED_QUANT_OPS = 7  # extra per layer forward with fused kernels: quantize each linear's input once
ADAMW_OPS = {False: (2, 9), True: (11, 2)}  # (per step, per trainable tensor): per-tensor loop | foreach
ZO_OPS_PER_TENSOR = 7  # per trainable tensor per SPSA direction: regenerate z and add it, four times


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
    c.operators = forward_operators(shape, targets, kernels, quantized)
    return c


def _lora_tensors(shape: ArchShape, targets: tuple[str, ...]) -> int:
    return 2 * shape.num_layers * sum(1 for t in targets if t in PROJECTIONS)


def forward_operators(shape: ArchShape, targets: tuple[str, ...], kernels: Kernels,
                      quantized: Quantized | None = None) -> int:
    """Operators one forward pass dispatches (embedding to loss): per layer, per LoRA target, once (``OPS``)."""
    ops = OPS["mixed" if kernels.mixed else "fp32"]
    n_targets = sum(1 for t in targets if t in PROJECTIONS)
    layer = ops["fwd_layer"] + ops["fwd_target"] * n_targets
    layer += EAGER_ATTENTION_OPS[0] if kernels.attention == "eager" else 0
    if quantized is not None:
        layer += EMULATED_QUANT_OPS if kernels.quant == "emulated" else FUSED_QUANT_OPS
    return shape.num_layers * layer + ops["fwd_model"]


def backward_operators(shape: ArchShape, targets: tuple[str, ...], kernels: Kernels) -> int:
    """Operators one backward pass dispatches with a frozen base (``OPS``)."""
    ops = OPS["mixed" if kernels.mixed else "fp32"]
    n_targets = sum(1 for t in targets if t in PROJECTIONS)
    layer = ops["bwd_layer"] + ops["bwd_target"] * n_targets
    layer += EAGER_ATTENTION_OPS[1] if kernels.attention == "eager" else 0
    return shape.num_layers * layer + ops["bwd_model"]


def step_operators(shape: ArchShape, job: Job, kernels: Kernels) -> int:
    """Operators one local step dispatches: forward(s), backward and AdamW, or ZeroQAT's forwards and its
    perturbations (the structure is the same at every pruning level: pruning saves no operator)."""
    fwd = forward_operators(shape, job.targets, kernels, job.quantized) * job.forwards_per_step
    tensors = _lora_tensors(shape, job.targets)
    if job.backprop:
        per_step, per_tensor = ADAMW_OPS[kernels.foreach_optimizer]
        return fwd + backward_operators(shape, job.targets, kernels) + per_step + per_tensor * tensors
    directions = max(1, job.forwards_per_step // 2)
    return fwd + ZO_OPS_PER_TENSOR * tensors * directions


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
    c.operators = backward_operators(shape, targets, kernels)
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
            per_step, per_tensor = ADAMW_OPS[kernels.foreach_optimizer]
            out.update += WorkCost(elementwise_bytes=7 * 4 * lora * iterations,  # AdamW
                                   operators=(per_step + per_tensor * _lora_tensors(shape, job.targets)) * iterations)
        else:
            directions = max(1, job.forwards_per_step // 2)
            out.update += WorkCost(elementwise_bytes=4 * 4 * 4 * lora * directions * iterations,
                                   operators=ZO_OPS_PER_TENSOR * _lora_tensors(shape, job.targets) * directions
                                   * iterations)
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
    """Peak bytes of the job: the sum of :func:`memory_terms`, the largest over the job's segments (the first:
    pruning only shrinks it)."""
    return max(int(sum(memory_terms(shape, job, kernels, kept).values())) for _, kept in job.segments)


# A GPU allocator's fixed working set at the peak: cuBLAS/cuBLASLt workspaces, which PyTorch allocates through its
# CUDA caching allocator, and the allocator's block rounding. An estimate, not a source: the H200 measurements
# (docs/cost_model.md) leave 0.02-0.07 GiB above the explicit terms at 8 x 64 tokens.
DEVICE_ALLOCATOR_BYTES = 64 * 2**20
# The host's glibc malloc keeps freed blocks in its heap (its mmap threshold rises to the largest block freed), so
# a CPU step's resident peak is a multiple of its live bytes: this share of the transient terms on top. Measured
# by ``python -m benchmarks.cost_model`` (``allocator_fraction``) at a point outside its memory grid.
HOST_ALLOCATOR_FRACTION = 1.76  # backprop 1.76, ZeroQAT 1.42 at llama-384x6, 8 x 128 tokens (2026-12-04)
# Logit-sized fp32 buffers alive at the loss (models/evaluation.py's next_token_stats): forward, the logits (in
# the compute dtype), their fp32 contiguous copy (``.float()`` of the shifted slice, or the reshape's copy when
# already fp32) and log-softmax's output (saved for backward); backward, that saved output, the gradient nll_loss
# hands it and the gradient it returns. 12 bytes per logit either way (10 forward in a 2-byte dtype).
LOSS_BYTES_PER_LOGIT = 12
# Forward-only (ZeroQAT: zeroqat's batch_loss -> next_token_stats under torch.inference_mode, nothing saved): in a
# 2-byte compute dtype the logits (2) are dropped once ``.float()`` has copied them (4; the caller's reference is
# handed to the callee, which rebinds it), then log-softmax writes its fp32 output (4): max(2 + 4, 4 + 4) = 8.
# In fp32 ``.float()`` is a no-op view, the reshape copies it (4) while the logits (4) stay alive, plus
# log-softmax's output (4): 12. Counted with torch.profiler(profile_memory=True) on the host (benchmarks/cost_model.py).
FORWARD_LOSS_BYTES_PER_LOGIT = {True: 8, False: 12}  # by Kernels.mixed
# Emulated W4A8 (the host's ZeroQAT path): fp32 transients while one linear is dequantized -- the codes as
# float, minus zero, times scale -- 3 fp32 copies of the largest linear's weight.
EMULATED_DEQUANT_COPIES = 3


def saved_values_per_token(shape: ArchShape, kept: Kept, job: Job, kernels: Kernels) -> dict[int, float]:
    """Values one decoder layer saves for backward per token, by bytes per value (counted with
    ``torch.autograd.graph.saved_tensors_hooks`` on transformers' Llama layer with PEFT LoRA, all 7 targets).

    fp32 (no autocast): the residual stream and norm outputs 4h, q/k/v and the attention output 2q+2g, the two
    norms' rsqrt 2, SwiGLU's gate, up, silu(gate) and product 4c, each LoRA target's x@A r; SDPA also keeps its
    log-sum-exp (one per query head), eager attention its scores, softmax and dropout outputs (3 x heads x s).
    Mixed (autocast to a 2-byte dtype): the norms' fp32 inputs 2h, rsqrt 2 and the log-sum-exp stay fp32; the
    rest is in the compute dtype, with the casts autocast makes on the way: 5h, 3q+2g, 4c, r per target (eager:
    2q+2g, scores and dropout outputs 3 x heads x s, plus the fp32 softmax heads x s)."""
    h, d, s, ab = shape.hidden_size, shape.head_dim, job.seq_len, kernels.act_bytes
    q, g, c, heads = kept.q_heads * d, kept.kv_heads * d, kept.channels, kept.q_heads
    lora = job.rank * sum(1 for t in job.targets if t in PROJECTIONS)
    eager = kernels.attention == "eager"
    if not kernels.mixed:
        return {4: 4 * h + 2 * q + 2 * g + 2 + 4 * c + lora + (3 * heads * s if eager else heads)}
    fp32 = 2 * h + 2 + (heads * s if eager else heads)
    low = 5 * h + (2 * q + 2 * g + 3 * heads * s if eager else 3 * q + 2 * g) + 4 * c + lora
    return {4: fp32, ab: low} if ab != 4 else {4: fp32 + low}


def memory_terms(shape: ArchShape, job: Job, kernels: Kernels, kept: Kept | None = None) -> dict[str, float]:
    """The peak of one step at structure ``kept`` (default: the job's first segment), term by term, in bytes.

    * ``base_weights``: the frozen base as stored -- ``weight_bytes`` per weight, or packed codes and group
      scales for a quantized base (embedding and norms stay float).
    * ``dense_base`` (``job.keeps_dense_base``): the dense float base the trainer prunes its copy from, as stored.
    * ``autocast_weight_copies`` (backprop, base stored wider than the compute dtype): autocast casts each
      linear's weight for its matmul and the matmul saves that copy for the input gradient -- every linear but
      layer 0's q/k/v (their input needs no gradient), the LM head, and the fp32 LoRA factors.
    * ``adapter_state``: LoRA factors in fp32 with their gradient and AdamW's two moments (16 bytes each; the
      previous step's gradients are still alive during the forward), or 4 bytes each for forward-only training.
    * ``saved_activations`` (backprop): :func:`saved_values_per_token` x tokens x layers, plus the final norm's
      saved input and the LM head's input.
    * ``working_set`` (forward-only): the forward's peak beyond the loss's buffers (the two are never live
      together): the KV cache transformers keeps for every layer (2g per token and layer) plus one layer's live
      values -- 4h in the residual dtype and 4c at up_proj's LoRA add, or on the emulated host path the widest
      linear's dequantization -- counted with torch.profiler's allocation records on 1-layer Llamas.
    * ``loss``: ``LOSS_BYTES_PER_LOGIT`` per logit (tokens x vocab) with backprop, ``FORWARD_LOSS_BYTES_PER_LOGIT``
      forward-only (or the LM head's weight cast next to the logits, if larger).
    * ``allocator``: ``kernels.allocator_bytes`` plus ``kernels.allocator_fraction`` of the transient terms.
    """
    kept = kept or job.segments[0][1]
    h, d, ab, L = shape.hidden_size, shape.head_dim, kernels.act_bytes, shape.num_layers
    layer_linears = sum(i * o for i, o in shape.projections(kept).values())
    rest = shape.num_params(kept) - L * layer_linears
    stored = _packed_bytes(layer_linears, job.quantized) if job.quantized else layer_linears * kernels.weight_bytes
    lora = shape.lora_params(kept, job.rank, list(job.targets))
    t, v = job.tokens_per_step, shape.vocab_size
    q, g, ch = kept.q_heads * d, kept.kv_heads * d, kept.channels
    terms = {"base_weights": L * stored + rest * kernels.weight_bytes}
    if job.keeps_dense_base:  # client/trainers/fedspine_prune.py prunes a copy of the dense base it keeps
        terms["dense_base"] = shape.num_params(shape.dense()) * kernels.weight_bytes
    if job.backprop:
        copies = 0.0
        if kernels.weight_bytes > ab:
            first_qkv = sum(i * o for name, (i, o) in shape.projections(kept).items()
                            if name in ("q_proj", "k_proj", "v_proj"))
            copies += (L * layer_linears - first_qkv + v * h) * ab
        if ab < 4:
            copies += lora * ab
        terms["autocast_weight_copies"] = copies
        terms["adapter_state"] = lora * 16
        per_token = sum(nbytes * n for nbytes, n in saved_values_per_token(shape, kept, job, kernels).items())
        terms["saved_activations"] = L * t * per_token + t * h * (2 * 4 + ab)
        terms["loss"] = LOSS_BYTES_PER_LOGIT * t * v
    else:
        terms["adapter_state"] = lora * 4
        # the residual stream is in the float rest's dtype (weight_bytes: ZeroQAT keeps it fp32 under autocast)
        hb = kernels.weight_bytes
        # peak inside a layer, at up_proj's LoRA add: the embedding output, residual, norm output and up_proj's
        # input 4h; silu(gate), up_proj's base output, the scaled LoRA output and their sum 4c
        layer = t * (4 * h * hb + 4 * ch * ab)
        if job.quantized is not None and kernels.quant == "emulated":
            largest = max(i * o for i, o in shape.projections(kept).values())
            widest = max(i for i, _ in shape.projections(kept).values())
            # or while the widest linear is dequantized: its fp32 copies and its smoothed, fake-quantized input
            layer = max(layer, t * 3 * h * hb + EMULATED_DEQUANT_COPIES * largest * 4 + 3 * t * widest * 4)
        # transformers' KV cache (use_cache defaults to True in eval): every layer's keys and values stay alive
        # until the forward returns (backprop saves the same tensors anyway)
        layer += L * t * 2 * g * ab
        # the LM head under autocast with a wider stored head: its weight cast (V x h) next to the logits
        head = (v * h + t * v) * ab if kernels.weight_bytes > ab else 0.0
        terms["loss"] = max(FORWARD_LOSS_BYTES_PER_LOGIT[kernels.mixed] * t * v, head)
        terms["working_set"] = max(layer - terms["loss"], 0.0)  # a layer's and the loss's never live together
    transient = sum(terms[k] for k in ("saved_activations", "working_set", "loss") if k in terms)
    terms["allocator"] = kernels.allocator_bytes + kernels.allocator_fraction * transient
    return terms
