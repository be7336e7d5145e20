"""Everything checked and built before the first round: data, base model, and does the work fit the fleet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleet.devices import Device, build_fleet
from fleet.memory import ModelShape, training_bytes
from models.base_checkpoint import ensure_base_checkpoint, load_base_model, load_corpus
from runconfig.load import ConfigError
from runconfig.schema import Settings
from textdata.corpus import Corpus, assign_clients


@dataclass
class Prepared:
    corpus: Corpus
    base_folder: Path
    devices: list[Device]
    shape: ModelShape


def lora_params(shape: ModelShape, rank: int, targets: int) -> int:
    """Upper bound on LoRA parameters: ``targets`` adapted matrices per layer, each at most h x 4h."""
    return shape.num_layers * targets * rank * (shape.hidden_size + 4 * shape.hidden_size)


def check_fits(settings: Settings, shape: ModelShape, devices: list[Device]) -> None:
    need = training_bytes(
        shape,
        lora_params(shape, settings.method.lora.rank, len(settings.method.lora.target_modules)),
        settings.client.batch_size,
        settings.data.seq_len,
        settings.model.param_bytes,
    )
    fits = [d for d in devices if need <= d.usable_memory_bytes]
    if not fits:
        biggest = max(devices, key=lambda d: d.usable_memory_bytes)
        raise ConfigError(
            f"the model does not fit any device of fleet '{settings.fleet.name}': training needs about "
            f"{need / 2**30:.2f} GiB, the largest device ({biggest.class_name}) has "
            f"{biggest.usable_memory_bytes / 2**30:.2f} GiB usable. Fix: a smaller model, client.batch_size, "
            "data.seq_len or method.lora.rank, or a fleet with larger devices"
        )


def prepare(settings: Settings, show_progress: bool = True) -> Prepared:
    corpus = load_corpus(settings)
    folder = ensure_base_checkpoint(settings, corpus, show_progress=show_progress)
    devices = build_fleet(settings.fleet, settings.seed)
    try:
        assign_clients(len(devices), corpus.num_clients, settings.seed, settings.data.roles_per_device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    shape = ModelShape.of(load_base_model(folder))
    check_fits(settings, shape, devices)
    return Prepared(corpus, folder, devices, shape)
