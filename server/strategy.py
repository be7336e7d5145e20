"""The run's strategy: the method's class (strategies/), with user-level DP composed on when privacy.mode=user."""

from __future__ import annotations

from collections.abc import Iterable

from fleet.arch import ArchShape
from fleet.devices import Device
from privacy.dp_fedavg import with_user_dp
from runconfig.schema import Settings
from strategies import strategy_class
from strategies.events import RunObserver
from strategies.fleet_fedavg import FleetFedAvg


def build_strategy(settings: Settings, devices: list[Device], shape: ArchShape, concurrency: int = 1,
                   observers: Iterable[RunObserver] = ()) -> FleetFedAvg:
    strategy = strategy_class(settings.method.name)(settings, devices, shape, concurrency, observers)
    return with_user_dp(strategy) if settings.privacy.mode == "user" else strategy
