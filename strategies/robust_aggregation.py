"""Byzantine-robust aggregation of adapter deltas (``aggregation.rule``), reusing Flower's own rules.

* ``krum`` / ``multikrum`` (Blanchard et al. 2017): score each delta by the summed squared distance to its
  n - f - 2 nearest others; average (example-weighted) the ``num_to_select`` best. Flower's
  ``select_multikrum`` (flwr/serverapp/strategy/multikrum.py) does the selection.
* ``trimmed_mean`` (Yin et al. 2018): per coordinate, drop the ``trim_fraction`` largest and smallest values
  and average the rest (unweighted). Flower's ``trim_mean`` (fedtrimmedavg.py) does the arithmetic.

Both operate on deltas of equal names and shapes (all devices at one rank); strategies with heterogeneous
ranks bring their deltas to common coordinates first. ``mean`` is plain example-weighted FedAvg.
"""

from __future__ import annotations

import numpy as np
from flwr.app import RecordDict
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import select_multikrum

from protocol.messages import ARRAYS, to_array_record
from runconfig.schema import AggregationConfig
from strategies.aggregation import weighted_mean

RULES = ("mean", "krum", "multikrum", "trimmed_mean")


def krum_select(deltas: list[dict[str, np.ndarray]], num_malicious: int, num_to_select: int) -> list[int]:
    """Indices of the deltas (Multi-)Krum keeps, best first."""
    contents = [RecordDict({ARRAYS: to_array_record(d)}) for d in deltas]
    chosen = select_multikrum(contents, num_malicious_nodes=num_malicious, num_nodes_to_select=num_to_select)
    return [next(i for i, c in enumerate(contents) if c is picked) for picked in chosen]


def trimmed_mean(deltas: list[dict[str, np.ndarray]], trim_fraction: float) -> dict[str, np.ndarray]:
    return {k: np.asarray(trim_mean(np.stack([d[k] for d in deltas]), trim_fraction), dtype=np.float32)
            for k in deltas[0]}


def aggregate(cfg: AggregationConfig, deltas: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    """The global delta under ``cfg.rule``."""
    if cfg.rule == "mean":
        return weighted_mean(deltas, weights)
    if cfg.rule in ("krum", "multikrum"):
        select = 1 if cfg.rule == "krum" else min(cfg.num_to_select, len(deltas))
        keep = krum_select(deltas, cfg.num_malicious, select)
        return weighted_mean([deltas[i] for i in keep], [weights[i] for i in keep])
    if cfg.rule == "trimmed_mean":
        return trimmed_mean(deltas, cfg.trim_fraction)
    raise ValueError(f"aggregation.rule: unknown '{cfg.rule}'; known: {', '.join(RULES)}")
