"""Where DP randomness comes from: a seeded generator (reproducible) or the OS CSPRNG (``privacy.rng``).

* ``seeded``: numpy's PCG64 ``Generator`` seeded from the run's seed and a purpose label. Reproducible runs and
  tests; NOT secure against an adversary who knows (or can guess) the seed, so for experiments only.
* ``secure``: uniforms from ``os.urandom`` (the kernel CSPRNG, as Opacus's ``secure_mode`` gets from
  torchcsprng, which is not installable here), turned into Gaussians by Box-Muller in float64. Not
  reproducible by design. Known caveat of every floating-point Gaussian sampler (Mironov 2012): the
  low-order bits of float noise can leak; our noise is added in float64 and rounded to float32 afterwards.
"""

from __future__ import annotations

import os

import numpy as np


class SeededNoise:
    kind = "seeded"

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return self._rng.normal(0.0, std, size=shape)

    def uniform(self, n: int) -> np.ndarray:
        return self._rng.random(n)

    def get_state(self) -> dict:
        """The generator's position: a resumed run continues the stream, never replays a draw."""
        return self._rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self._rng.bit_generator.state = state


class SecureNoise:
    kind = "secure"

    def get_state(self) -> None:  # nothing to keep: every draw is fresh from the OS
        return None

    def set_state(self, state) -> None:
        pass

    def uniform(self, n: int) -> np.ndarray:
        """Uniform floats in [0, 1) with 53 random bits each, from the OS CSPRNG."""
        words = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
        return (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        n = int(np.prod(shape)) if shape else 1
        half = (n + 1) // 2
        u1 = 1.0 - self.uniform(half)  # (0, 1]: log is finite
        u2 = self.uniform(half)
        radius = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])[:n]
        return (z * std).reshape(shape)


def noise_source(kind: str, seed: int) -> SeededNoise | SecureNoise:
    if kind == "secure":
        return SecureNoise()
    if kind == "seeded":
        return SeededNoise(seed)
    raise ValueError(f"privacy.rng: unknown '{kind}' (seeded or secure)")
