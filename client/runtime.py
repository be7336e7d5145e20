"""Per-process state of a ClientApp worker: loaded once, reused for every round and every virtual device.

A Ray actor (or a real device's SuperNode) runs many rounds; the base model, corpus and adapters are loaded
on the first message and kept in this process, never once per round.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from client.device_data import DeviceData
from client.device_detect import attention_for, autocast, autocast_dtype, base_dtype, hold_frozen_in, select_device
from fleet.devices import Device, build_fleet
from models.base_checkpoint import base_dir, ensure_base_checkpoint, load_base_model, load_corpus
from models.lora import attach_lora
from runconfig.plain import from_plain
from runconfig.schema import Settings
from textdata.corpus import Corpus, assign_clients, windows


@dataclass
class ClientRuntime:
    settings: Settings
    corpus: Corpus
    devices: list[Device]
    clients_of_device: list[list[int]]
    base_model: torch.nn.Module
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where the model and data live
    _models: dict = field(default_factory=dict)  # kind -> (key, model): every model this process keeps

    def autocast(self):
        """Mixed precision for this device (``client.precision``), or a no-op on fp32 devices."""
        return autocast(self.device, self.settings.client.precision)

    def device_data(self, device_index: int) -> DeviceData:
        """The device's roles, each cut into its own windows (no window straddles two roles)."""
        pad = self.corpus.tokenizer.pad_token_id
        seq_len = self.settings.data.seq_len
        clients = self.clients_of_device[device_index]
        train = [windows(self.corpus.client_train_ids(c), seq_len, pad) for c in clients]
        test = [windows(self.corpus.client_test_ids(c), seq_len, pad) for c in clients]
        return DeviceData(
            torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]),
            torch.cat([x for x, _ in test]), torch.cat([y for _, y in test]),
        )

    def cached_model(self, kind: str, key, build):
        """The process's one model of this kind (the PEFT-wrapped base, ZeroQAT's quantized one, the batched
        multi-adapter copies, the pristine dense base) for ``key``; another key drops the held one, then builds."""
        held = self._models.get(kind)
        if held is None or held[0] != key:
            self._models.pop(kind, None)
            self._models[kind] = (key, build())
        return self._models[kind][1]

    def adapter_model(self, rank: int):
        """The base model wrapped with a LoRA adapter of this rank (PEFT wraps in place: one live at a time)."""
        held = self._models.get("adapter")
        if held is not None and held[0] != rank:
            self.base_model = held[1].unload()
        return self.cached_model("adapter", rank, lambda: attach_lora(self.base_model, self.settings.method.lora,
                                                                      self.settings.seed, rank))

    def dense_base(self) -> torch.nn.Module:
        """A dense base without adapters (the runtime's ``base_model`` carries PEFT layers injected in place),
        held as ``base_model`` is: on the device, frozen weights in its compute dtype. FedSpine prunes copies of
        it; the batched multi-adapter model wraps a copy of it."""
        folder = base_dir(self.settings)
        return self.cached_model("dense_base", str(folder), lambda: hold_base(
            load_base_model(folder), self.device, self.settings.client.precision))


def hold_base(base: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    """``base`` on ``device`` as a device holds it: frozen weights in the compute dtype on a GPU (bf16, or fp16
    on pre-Ampere Jetsons), fp32 on CPUs; attention as that dtype needs (client.device_detect)."""
    base = hold_frozen_in(base.to(device), base_dtype(device, precision))
    attention_for(base, device, autocast_dtype(device, precision))
    return base


@lru_cache(maxsize=2)
def _runtime(settings_json: str) -> ClientRuntime:
    settings = from_plain(json.loads(settings_json))
    if settings.simulation.reuse_freed_memory:  # this client process (a Ray worker or an in-process worker)
        from simulations.host_allocator import reuse_freed_memory

        reuse_freed_memory()
    corpus = load_corpus(settings)
    folder = ensure_base_checkpoint(settings, corpus, show_progress=False)
    devices = build_fleet(settings.fleet, settings.seed)
    device = select_device(settings.client.device)
    base_model = hold_base(load_base_model(folder), device, settings.client.precision)
    return ClientRuntime(
        settings=settings,
        corpus=corpus,
        devices=devices,
        clients_of_device=assign_clients(
            len(devices), corpus.num_clients, settings.seed, settings.data.roles_per_device
        ),
        base_model=base_model,
        device=device,
    )


def get_runtime(plain_settings: dict) -> ClientRuntime:
    return _runtime(json.dumps(plain_settings, sort_keys=True))


@lru_cache(maxsize=1)
def host_gflops() -> float:
    """This process's achieved matmul rate (GFLOP/s), the reference the simulated clock scales from."""
    n = 256
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.2:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9
