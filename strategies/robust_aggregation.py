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
from runconfig.choices import AggregationRule
from runconfig.schema import AggregationConfig
from strategies.aggregation import weighted_mean


def krum_select(deltas: list[dict[str, np.ndarray]], num_malicious: int, num_to_select: int) -> list[int]:
    """Indices of the deltas (Multi-)Krum keeps, best first."""
    contents = [RecordDict({ARRAYS: to_array_record(d)}) for d in deltas]
    chosen = select_multikrum(contents, num_malicious_nodes=num_malicious, num_nodes_to_select=num_to_select)
    return [next(i for i, c in enumerate(contents) if c is picked) for picked in chosen]


def trimmed_mean(deltas: list[dict[str, np.ndarray]], trim_fraction: float) -> dict[str, np.ndarray]:
    return {k: np.asarray(trim_mean(np.stack([d[k] for d in deltas]), trim_fraction), dtype=np.float32)
            for k in deltas[0]}


def _krum(cfg: AggregationConfig, deltas, weights, select: int) -> dict[str, np.ndarray]:
    keep = krum_select(deltas, cfg.num_malicious, select)
    return weighted_mean([deltas[i] for i in keep], [weights[i] for i in keep])


# One entry per runconfig.choices.AggregationRule (tests/test_structure.py checks they agree).
RULES = {
    AggregationRule.mean: lambda cfg, deltas, weights: weighted_mean(deltas, weights),
    AggregationRule.krum: lambda cfg, deltas, weights: _krum(cfg, deltas, weights, 1),
    AggregationRule.multikrum: lambda cfg, deltas, weights: _krum(cfg, deltas, weights,
                                                                  min(cfg.num_to_select, len(deltas))),
    AggregationRule.trimmed_mean: lambda cfg, deltas, weights: trimmed_mean(deltas, cfg.trim_fraction),
}


def aggregate(cfg: AggregationConfig, deltas: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    """The global delta under ``cfg.rule`` (a validated AggregationRule)."""
    return RULES[AggregationRule(cfg.rule)](cfg, deltas, weights)
