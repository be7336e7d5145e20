"""Everything checked and built before the first round: data, base model, and does the work fit the fleet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleet.arch import ArchShape
from fleet.devices import Device, build_fleet
from fleet.pricing import Pricer
from models.base_checkpoint import base_dir, ensure_base_checkpoint, load_corpus
from runconfig.choices import TrainerName
from runconfig.errors import ConfigError
from runconfig.schema import Settings
from textdata.corpus import Corpus, assign_clients


@dataclass
class Prepared:
    corpus: Corpus
    base_folder: Path
    devices: list[Device]
    shape: ArchShape  # the trained model's (the pricer maps it to cost.priced_as)


def trained_shape(settings: Settings, folder: Path | None = None) -> ArchShape:
    """The trained model's shape, from its checkpoint's config (no weights loaded)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder or base_dir(settings)))
    return ArchShape.from_hf_config(config, settings.model.name)


def check_fits(settings: Settings, shape: ArchShape, devices: list[Device]) -> None:
    """Refuse a run whose smallest work (the method's lowest rank, dense) fits no device of the fleet."""
    pricer = Pricer(settings, shape)
    fs = settings.method.fedspine
    rank = min(fs.ranks) if fs is not None else settings.method.lora.rank
    c = settings.client

    def need(device: Device) -> int:
        trainer = TrainerName.fedspine_prune if fs is not None else (c.trainer or device.profile.trainer)
        return pricer.memory(pricer.job(trainer, rank, c.batch_size, c.local_steps))

    if not any(need(d) <= d.usable_memory_bytes for d in devices):
        biggest = max(devices, key=lambda d: d.usable_memory_bytes)
        raise ConfigError(
            f"the model does not fit any device of fleet '{settings.fleet.name}': training "
            f"{pricer.label} needs about {need(biggest) / 2**30:.2f} GiB on the largest device "
            f"({biggest.class_name}), which has {biggest.usable_memory_bytes / 2**30:.2f} GiB usable. Fix: a smaller "
            "model (or cost=), client.batch_size, data.seq_len or method.lora.rank, or a fleet with larger devices"
        )


def device_windows(settings: Settings, corpus: Corpus, num_devices: int) -> dict[int, int]:
    """The training windows each simulated device holds (what its honest reply reports as num-examples):
    the aggregation weight a reply may claim at most (strategies/update_validation.py)."""
    seq_len = settings.data.seq_len
    clients = assign_clients(num_devices, corpus.num_clients, settings.seed, settings.data.roles_per_device)
    return {i: sum(max(1, -(-len(corpus.client_train_ids(c)) // seq_len)) for c in roles)
            for i, roles in enumerate(clients)}


def prepare(settings: Settings, show_progress: bool = True) -> Prepared:
    corpus = load_corpus(settings)
    folder = ensure_base_checkpoint(settings, corpus, show_progress=show_progress)
    devices = build_fleet(settings.fleet, settings.seed)
    try:
        assign_clients(len(devices), corpus.num_clients, settings.seed, settings.data.roles_per_device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    shape = trained_shape(settings, folder)
    check_fits(settings, shape, devices)
    return Prepared(corpus, folder, devices, shape)
