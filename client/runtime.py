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

from fleet.devices import Device, build_fleet
from models.base_checkpoint import ensure_base_checkpoint, load_base_model, load_corpus
from models.lora import attach_lora
from runconfig.load import from_plain
from runconfig.schema import Settings
from textdata.corpus import Corpus, assign_clients, windows


@dataclass
class DeviceData:
    train_inputs: torch.Tensor
    train_labels: torch.Tensor
    test_inputs: torch.Tensor
    test_labels: torch.Tensor


@dataclass
class ClientRuntime:
    settings: Settings
    corpus: Corpus
    devices: list[Device]
    client_of_device: list[int]
    base_model: torch.nn.Module
    _adapters: dict = field(default_factory=dict)

    def device_data(self, device_index: int) -> DeviceData:
        client = self.client_of_device[device_index]
        pad = self.corpus.tokenizer.pad_token_id
        seq_len = self.settings.data.seq_len
        tr_x, tr_y = windows(self.corpus.client_train_ids(client), seq_len, pad)
        te_x, te_y = windows(self.corpus.client_test_ids(client), seq_len, pad)
        return DeviceData(tr_x, tr_y, te_x, te_y)

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
    corpus = load_corpus(settings)
    folder = ensure_base_checkpoint(settings, corpus, show_progress=False)
    devices = build_fleet(settings.fleet, settings.seed)
    return ClientRuntime(
        settings=settings,
        corpus=corpus,
        devices=devices,
        client_of_device=assign_clients(len(devices), corpus.num_clients, settings.seed),
        base_model=load_base_model(folder),
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
