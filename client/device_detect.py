"""What a real device is: its host (CPU/GPU, memory, Jetson or not), its place in the fleet, its compute device.

A SuperNode says which device of the fleet it is with ``--node-config 'partition-id=3'`` and may name its class
(``device-class="jetson_tx2"``) and trainer (``trainer="lora_backprop"``); what it does not say is detected here:
CUDA through ``torch.cuda``, memory from ``/proc/meminfo`` (or psutil), a Jetson from ``/etc/nv_tegra_release``.
The same rules hold in simulation, where node configs carry only ``partition-id``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from runconfig.choices import ComputeDevice, Precision

logger = logging.getLogger(__name__)

NODE_DEVICE_CLASS = "device-class"
NODE_TRAINER = "trainer"


@dataclass(frozen=True)
class HostProfile:
    """The hardware this process runs on (reported to the server in the query reply)."""

    machine: str  # aarch64, x86_64, ...
    cpu_count: int
    memory_gb: float
    cuda: bool
    gpu_name: str
    is_jetson: bool
    is_android: bool

    def metrics(self) -> dict[str, float]:
        return {
            "host-memory-gb": self.memory_gb,
            "host-cpus": float(self.cpu_count),
            "host-cuda": float(self.cuda),
            "host-jetson": float(self.is_jetson),
            "host-android": float(self.is_android),
        }


def memory_gb(meminfo: Path = Path("/proc/meminfo")) -> float:
    """Total RAM (GiB): /proc/meminfo (Linux, Jetson, Termux), else psutil, else 0."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    try:
        import psutil

        return psutil.virtual_memory().total / 2**30
    except ImportError:
        return 0.0


def is_jetson() -> bool:
    """JetPack's L4T release file, or a Tegra device tree (Jetson boards without the file)."""
    if Path("/etc/nv_tegra_release").exists():
        return True
    try:
        return "tegra" in Path("/proc/device-tree/compatible").read_bytes().decode(errors="ignore").lower()
    except OSError:
        return False


def detect_host() -> HostProfile:
    cuda = torch.cuda.is_available()
    return HostProfile(
        machine=platform.machine(),
        cpu_count=os.cpu_count() or 1,
        memory_gb=round(memory_gb(), 2),
        cuda=cuda,
        gpu_name=torch.cuda.get_device_name(0) if cuda else "",
        is_jetson=is_jetson(),
        is_android="ANDROID_ROOT" in os.environ or "com.termux" in os.environ.get("PREFIX", ""),
    )


# ------------------------------------------------------------------ the device's place in the fleet
def device_class_of(node_config, classes: dict, fleet_class: str) -> str:
    """The node's class: its ``device-class`` node config when given (must be a class of the fleet), else the
    class the fleet assigned to its partition id."""
    name = node_config.get(NODE_DEVICE_CLASS) if node_config else None
    if name is None:
        return fleet_class
    if name not in classes:
        raise ValueError(
            f"node config {NODE_DEVICE_CLASS}='{name}' is not a class of this fleet "
            f"({', '.join(sorted(classes))}). Fix: `flower-supernode --node-config "
            f"'partition-id=<i> {NODE_DEVICE_CLASS}=\"<one of them>\"'` or drop it to use the fleet's class"
        )
    return name


def trainer_of(node_config, forced: str | None, classes: dict, fleet_class: str, sent: str) -> str:
    """Which local trainer runs: ``client.trainer`` when the run forces one, else the node's own ``trainer``
    node config, else its ``device-class``'s trainer, else what the server sent (the fleet class's)."""
    if forced:
        return forced
    if node_config and node_config.get(NODE_TRAINER):
        return str(node_config[NODE_TRAINER])
    if node_config and node_config.get(NODE_DEVICE_CLASS):
        return classes[device_class_of(node_config, classes, fleet_class)].trainer
    return sent


# ------------------------------------------------------------------ compute device and precision
def select_device(preference: str = "auto") -> torch.device:
    """``auto``: the GPU when CUDA works (Jetson, workstation), else the CPU. ``cuda`` without CUDA falls back to
    the CPU with a warning, so one config runs on every device of a mixed fleet. The settings' value was checked
    with the config (``client.device`` is a :class:`ComputeDevice`); a caller's own string is checked here."""
    if preference not in set(ComputeDevice):
        raise ValueError(f"client.device must be one of {', '.join(ComputeDevice)} (got '{preference}')")
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if preference == "cuda":
        logger.warning("client.device=cuda but CUDA is not available here; training on the CPU")
    return torch.device("cpu")


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for this device, or None for full fp32.

    ``auto``: bf16 on GPUs that support it (Ampere and newer, Jetson Orin), fp16 on older CUDA GPUs (Jetson
    TX2/Xavier have fast fp16 but no bf16), fp32 on CPUs. ``bf16``/``fp16`` force it (bf16 on a CPU works,
    fp16 on a CPU falls back to fp32); ``fp32`` turns it off.
    """
    if precision not in set(Precision):
        raise ValueError(f"client.precision must be one of {', '.join(Precision)} (got '{precision}')")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        logger.warning("client.precision=fp16 needs a GPU; running fp32 on the CPU")
    return None


def autocast(device: torch.device, precision: str = "auto"):
    """A ``torch.autocast`` context for the device's mixed precision, or a no-op context for fp32."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    # cache_enabled=False: autocast otherwise casts each fp32 leaf that requires grad (the adapter) once per
    # region and reuses that cast, so a whole local round inside one region trains on its first step's adapter
    # (and forward-only SPSA never sees its perturbations)
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False)


def no_autocast(device_type: str):
    """Autocast off on this device type (a no-op context where the device has no autocast, e.g. meta)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def attention_for(model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None) -> None:
    """On CPUs in bf16, attention runs transformers' eager (matmul) implementation: torch 2.13's SDPA flash kernel
    for CPU is ~3.5x slower forward+backward in bf16 at the simulation's shapes (docs/benchmarks/throughput.md)."""
    if device.type == "cpu" and dtype == torch.bfloat16 and model.config._attn_implementation != "eager":
        model.set_attn_implementation("eager")


def base_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The dtype the frozen base is stored in: the compute (autocast) dtype on a GPU -- bf16 where supported, fp16
    on pre-Ampere Jetsons -- so a device holds the 2-byte base it is priced for; fp32 on CPUs (the simulation host
    keeps its fp32 weights; autocast casts per matmul). LoRA adapters and their optimizer state stay fp32."""
    dtype = autocast_dtype(device, precision)
    return dtype if device.type == "cuda" and dtype is not None else torch.float32


def is_adapter(name: str) -> bool:
    """A LoRA factor's parameter name (PEFT's ``lora_A`` / ``lora_B``)."""
    return ".lora_A." in name or ".lora_B." in name


def hold_frozen_in(model: torch.nn.Module, dtype: torch.dtype, keep=is_adapter) -> torch.nn.Module:
    """Store the model's frozen floating-point parameters in ``dtype``, in place. Trainable parameters, those
    whose name ``keep`` accepts (LoRA factors: ZeroQAT trains them without autograd) and buffers such as rotary
    frequencies keep their dtype; a tied embedding stays tied. Returns the model."""
    for name, p in model.named_parameters():
        if not p.requires_grad and not keep(name) and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    return model
