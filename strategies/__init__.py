"""Server strategies by ``method.name``: Flower Strategy subclasses, one module per method."""

from __future__ import annotations

from strategies.dp_dylora import DyLoraFedAvg
from strategies.fedspine import FEDSPINE_METHODS, FedSpine
from strategies.events import RunObserver
from strategies.fleet_fedavg import FleetFedAvg

STRATEGIES: dict[str, type[FleetFedAvg]] = {"fedavg_lora": FleetFedAvg}
STRATEGIES["dp_dylora"] = STRATEGIES["dp_lora"] = DyLoraFedAvg  # privacy/dylora.py; DP from privacy=user_dp
STRATEGIES.update(dict.fromkeys(FEDSPINE_METHODS, FedSpine))


def strategy_class(method: str) -> type[FleetFedAvg]:
    if method not in STRATEGIES:
        raise ValueError(f"method.name: unknown '{method}'; known: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[method]


__all__ = ["STRATEGIES", "FleetFedAvg", "RunObserver", "strategy_class"]
