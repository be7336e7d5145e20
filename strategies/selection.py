"""Who trains this round: a cohort drawn from the devices that are online and can fit the work.

:func:`available` is the one online/memory filter; a :class:`Selection` decides who is asked before it
(:class:`UniformSelection`: a seeded uniform draw among the available; user-level DP's Poisson sampling,
privacy/sampling.py, samples the whole population first and then thins with the same filter).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fleet.devices import Device


def seeded(*parts) -> int:
    """A 32-bit seed from any parts, stable across processes (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


@dataclass
class Drawn:
    """A cohort and what kept the others out of it."""

    cohort: list[Device]
    offline: int = 0
    skipped_memory: int = 0


def available(devices: Sequence[Device], rng: np.random.Generator, connected: Container[int],
              fits: Callable[[Device], bool]) -> Drawn:
    """The devices that are connected, online this round (one uniform per connected device against its class's
    availability, from ``rng``) and whose memory fits the work (``fits``); the others counted."""
    out = Drawn([])
    for device in devices:
        if device.index not in connected or rng.random() >= device.profile.availability:
            out.offline += 1
        elif not fits(device):
            out.skipped_memory += 1
        else:
            out.cohort.append(device)
    return out


class Selection(Protocol):
    def draw(self, server_round: int, size: int, purpose: str, attempt: int, connected: Container[int],
             fits: Callable[[Device], bool]) -> Drawn:
        """The cohort of one round's ``purpose`` ("train" or "evaluate"); ``attempt`` > 0: a retried round."""


class UniformSelection:
    """Seeded: ``size`` devices uniformly among the available ones (a retry draws afresh)."""

    def __init__(self, devices: Sequence[Device], seed: int) -> None:
        self.devices, self.seed = devices, seed

    def draw(self, server_round: int, size: int, purpose: str, attempt: int, connected: Container[int],
             fits: Callable[[Device], bool]) -> Drawn:
        parts = (self.seed, server_round, purpose) + ((attempt,) if attempt else ())
        rng = np.random.default_rng(seeded(*parts))
        drawn = available(self.devices, rng, connected, fits)
        candidates = drawn.cohort
        chosen = rng.choice(len(candidates), size=min(size, len(candidates)), replace=False) if candidates else []
        drawn.cohort = [candidates[i] for i in sorted(chosen)]
        return drawn
