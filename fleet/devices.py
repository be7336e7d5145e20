"""The devices of a fleet: which class each device is, and the natural client whose data it holds."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

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
    """Devices 0..size-1; classes are interleaved by a seeded shuffle so no index range is one class.

    With ``fleet.link_spread`` / ``fleet.compute_spread`` > 0, each device's links / peak compute differ from
    its class's nominal values by a lognormal factor (a board further from the access point, a phone on a weak
    cell, a Jetson in a lower power mode), so a device's class alone does not tell its speed.
    """
    names = [name for name, n in class_counts(fleet).items() for _ in range(n)]
    rng = random.Random(seed)
    rng.shuffle(names)
    devices = []
    for i, name in enumerate(names):
        profile = fleet.classes[name]
        link = math.exp(rng.gauss(0.0, fleet.link_spread)) if fleet.link_spread else 1.0
        compute = math.exp(rng.gauss(0.0, fleet.compute_spread)) if fleet.compute_spread else 1.0
        if link != 1.0 or compute != 1.0:
            int8 = profile.peak_int8_gops * compute if profile.peak_int8_gops is not None else None
            profile = replace(profile, uplink_mbps=profile.uplink_mbps * link,
                              downlink_mbps=profile.downlink_mbps * link, peak_gflops=profile.peak_gflops * compute,
                              peak_int8_gops=int8)
        devices.append(Device(i, name, profile))
    return devices
