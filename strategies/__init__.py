"""Server strategies by ``method.name``: Flower Strategy subclasses, one module per method."""

from __future__ import annotations

from strategies.dp_dylora import DyLoraFedAvg
from strategies.fleet_fedavg import FleetFedAvg, RoundObserver

STRATEGIES: dict[str, type[FleetFedAvg]] = {"fedavg_lora": FleetFedAvg}
STRATEGIES["dp_dylora"] = STRATEGIES["dp_lora"] = DyLoraFedAvg  # privacy/dylora.py; DP from privacy=user_dp


def strategy_class(method: str) -> type[FleetFedAvg]:
    if method not in STRATEGIES:
        raise ValueError(f"method.name: unknown '{method}'; known: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[method]


__all__ = ["STRATEGIES", "FleetFedAvg", "RoundObserver", "strategy_class"]
