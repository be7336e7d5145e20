"""What a device is charged for a round's work, priced as ``cost.priced_as`` (conf/cost/*.yaml).

``cost.clock`` chooses the compute time:

* ``analytic`` (default): the cost model's FLOPs and memory traffic of the work on the priced model
  (fleet/cost_model.py) over the device's effective rates: matmul peak (INT8 for W4A8 kernels where the spec
  sheet gives one, else FP16) x the class's efficiency for the trainer, and DRAM bandwidth x its memory
  efficiency, plus every dispatched operator at the class's ``operator_us`` (the per-step overhead). Bytes are
  the adapter at the priced model's shapes in ``cost.wire_bytes`` per value (a ZeroQAT
  seed upload is model-independent and counted as sent). Same work, same seconds, on any host.
* ``host_scaled``: the host-measured compute scaled by host GEMM rate / device effective rate (the clock before
  the cost model; depends on host load), with the bytes actually sent.
* ``measured``: the compute time the device itself measured (real devices), with the bytes actually sent.

Memory checks always use the priced model: work that would not fit the device is never sent.
"""

from __future__ import annotations

from fleet.arch import ArchShape, Kept
from fleet.clock import DeviceTime
from fleet.cost_model import (DEVICE_ALLOCATOR_BYTES, Job, Kernels, Quantized, adapter_bytes, job_cost, structure_bytes,
                              training_memory)
from fleet.devices import Device
from pruning.schedule import segments
from runconfig.choices import FORWARD_ONLY_TRAINERS, TrainerName
from runconfig.schema import Settings

DENSE_BASE_TRAINERS = {TrainerName.fedspine_prune}  # hold the dense base next to the pruned model they train


def priced_shape(settings: Settings, trained: ArchShape) -> ArchShape:
    sh = settings.cost.shape
    if sh is None:
        return trained
    head_dim = sh.head_dim or sh.hidden_size // sh.num_attention_heads
    return ArchShape(name=settings.cost.priced_as, hidden_size=sh.hidden_size, intermediate_size=sh.intermediate_size,
                     num_layers=sh.num_hidden_layers, num_heads=sh.num_attention_heads,
                     num_kv_heads=sh.num_key_value_heads, head_dim=head_dim, vocab_size=sh.vocab_size,
                     tie_word_embeddings=sh.tie_word_embeddings, attention_bias=sh.attention_bias)


class Pricer:
    def __init__(self, settings: Settings, trained: ArchShape) -> None:
        self.settings = settings
        self.trained = trained
        self.shape = priced_shape(settings, trained)
        self.targets = tuple(settings.method.lora.target_modules)
        fs = settings.method.fedspine
        self.head_rule = fs.head_rule if fs is not None else "within_groups"
        # a device's GPU: 2-byte compute, the base stored in param_bytes, AdamW's multi-tensor path, and the CUDA
        # caching allocator's fixed working set (fleet/cost_model.py's DEVICE_ALLOCATOR_BYTES)
        self.kernels = Kernels(act_bytes=2, weight_bytes=float(settings.model.param_bytes), quant="fused",
                               foreach_optimizer=True, allocator_bytes=DEVICE_ALLOCATOR_BYTES)

    @property
    def label(self) -> str:
        """The priced model, as tables and MLflow name it."""
        return f"{self.shape.name} (trained model)" if self.settings.cost.shape is None else self.shape.name

    # ------------------------------------------------------------------ the work
    def kept(self, level: float) -> Kept:
        return self.shape.kept(level, self.head_rule)

    def job(self, trainer: str, rank: int, batch_size: int, steps: int, levels: list[float] | None = None) -> Job:
        """A device's round on the priced model: ``levels`` gives each iteration's pruning level (dense: None)."""
        runs = segments(levels) if levels else [(steps, 0.0)]
        z = self.settings.zeroqat
        forward_only = trainer in FORWARD_ONLY_TRAINERS
        quantized = None
        if forward_only:
            from quantization.spec import parse_wa

            spec = parse_wa(z.quant, z.group_size)
            quantized = Quantized(spec.w_bits, z.group_size, spec.a_bits)
        return Job(backprop=not forward_only, rank=rank, targets=self.targets, batch_size=batch_size,
                   seq_len=self.settings.data.seq_len, segments=tuple((n, self.kept(lv)) for n, lv in runs),
                   forwards_per_step=2 * z.perturbations if forward_only else 1, quantized=quantized,
                   keeps_dense_base=trainer in DENSE_BASE_TRAINERS)

    # ------------------------------------------------------------------ rates
    def matmul_rate(self, device: Device, trainer: str, job: Job) -> float:
        """FLOP/s the device achieves on the job's matmuls."""
        p = device.profile
        int8 = job.quantized is not None and job.quantized.act_bits <= 8 and p.peak_int8_gops is not None
        peak = (p.peak_int8_gops if int8 else p.peak_gflops) * 1e9
        return peak * p.efficiency[trainer]

    def bandwidth(self, device: Device) -> float:
        return device.profile.memory_bandwidth_gbps * 1e9 * device.profile.memory_efficiency

    def compute_seconds(self, device: Device, trainer: str, job: Job) -> float:
        """Roofline of the job's matmuls and traffic plus its operators at the class's per-operator cost."""
        cost = job_cost(self.shape, job, self.kernels).total()
        return cost.seconds(self.matmul_rate(device, trainer, job), self.bandwidth(device),
                            device.profile.operator_us * 1e-6)

    def host_scaled_seconds(self, device: Device, trainer: str, host_compute_s: float, host_gflops: float) -> float:
        return host_compute_s * host_gflops / (device.profile.peak_gflops * device.profile.efficiency[trainer])

    # ------------------------------------------------------------------ bytes and memory
    def adapter_bytes(self, level: float, rank: int, with_structure: bool = False) -> int:
        out = adapter_bytes(self.shape, self.kept(level), rank, self.targets, self.settings.cost.wire_bytes)
        return out + (structure_bytes(self.shape) if with_structure else 0)

    def memory(self, job: Job) -> int:
        return training_memory(self.shape, job, self.kernels)

    # ------------------------------------------------------------------ the clock
    def device_time(self, device: Device, trainer: str, job: Job, priced_bytes: tuple[int, int],
                    measured: tuple[float, float], sent_bytes: tuple[int, int], stall_s: float = 0.0) -> DeviceTime:
        """A reply's device time under ``cost.clock``; ``measured`` = (compute_s, host_gflops) the device
        reported, ``priced_bytes`` / ``sent_bytes`` = (down, up) at the priced model / as actually sent,
        ``stall_s`` = time the device reports it was held up beyond its work (throttled, backgrounded), added
        under every clock."""
        clock = self.settings.cost.clock
        if clock == "analytic":
            compute, (down, up) = self.compute_seconds(device, trainer, job), priced_bytes
        elif clock == "host_scaled":
            compute, (down, up) = self.host_scaled_seconds(device, trainer, *measured), sent_bytes
        else:
            compute, (down, up) = measured[0], sent_bytes
        p = device.profile
        return DeviceTime(compute_s=compute + stall_s, download_s=down * 8 / (p.downlink_mbps * 1e6),
                          upload_s=up * 8 / (p.uplink_mbps * 1e6), bytes_down=int(down), bytes_up=int(up))
