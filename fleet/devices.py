"""The devices of a fleet: which class each device is, and the natural client whose data it holds."""

from __future__ import annotations

import random
from dataclasses import dataclass

from runconfig.schema import DeviceClass, FleetConfig


@dataclass(frozen=True)
class Device:
    index: int  # the Flower partition-id of its SuperNode
    class_name: str
    profile: DeviceClass

    @property
    def usable_memory_bytes(self) -> float:
        return self.profile.memory_gb * 2**30 * self.profile.usable_memory_fraction


def class_counts(fleet: FleetConfig) -> dict[str, int]:
    """Devices per class for ``fleet.size``: shares rounded by largest remainder, so counts sum to the size."""
    raw = {name: c.share * fleet.size for name, c in fleet.classes.items()}
    counts = {name: int(v) for name, v in raw.items()}
    missing = fleet.size - sum(counts.values())
    for name in sorted(raw, key=lambda n: (-(raw[n] - counts[n]), n))[:missing]:
        counts[name] += 1
    return counts


def build_fleet(fleet: FleetConfig, seed: int) -> list[Device]:
    """Devices 0..size-1; classes are interleaved by a seeded shuffle so no index range is one class."""
    names = [name for name, n in class_counts(fleet).items() for _ in range(n)]
    random.Random(seed).shuffle(names)
    return [Device(i, name, fleet.classes[name]) for i, name in enumerate(names)]
