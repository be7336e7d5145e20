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
from models.base_checkpoint import ensure_base_checkpoint, load_base_model, load_corpus
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
    _adapters: dict = field(default_factory=dict)

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

    def adapter_model(self, rank: int):
        """The base model wrapped with a LoRA adapter of this rank (PEFT wraps in place: one live at a time)."""
        if rank not in self._adapters:
            for peft_model in self._adapters.values():
                self.base_model = peft_model.unload()
            self._adapters.clear()
            self._adapters[rank] = attach_lora(self.base_model, self.settings.method.lora, self.settings.seed, rank)
        return self._adapters[rank]


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
    # the frozen base in the device's compute dtype on a GPU (bf16, or fp16 on pre-Ampere Jetsons); fp32 on CPUs
    base_model = hold_frozen_in(load_base_model(folder).to(device), base_dtype(device, settings.client.precision))
    attention_for(base_model, device, autocast_dtype(device, settings.client.precision))
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
