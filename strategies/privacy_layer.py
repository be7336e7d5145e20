"""The points where a privacy mechanism changes a strategy's round, as one explicit interface.

A strategy holds a :class:`PrivacyLayer` (``strategy.privacy``); :class:`NoPrivacy` changes nothing. User-level
DP-FedAvg (privacy/dp_fedavg.py) is another layer, put on any strategy by ``with_user_dp(strategy)``: it
replaces the strategy's train selection and these points, and never copies the strategy's own code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

from protocol.messages import Update, Work

Delta = dict[str, np.ndarray]
Rule = Callable[[int, list[Update]], Delta]  # the strategy's own aggregation (server round, updates) -> delta


class PrivacyLayer(ABC):
    @abstractmethod
    def trainer(self) -> str | None:
        """The trainer every device must use (None: the strategy's choice)."""

    @abstractmethod
    def decorate(self, work: Work) -> Work:
        """The work as sent, with what the mechanism asks of the device (clip, noise share)."""

    @abstractmethod
    def norm_floor(self, global_adapter: Delta) -> float:
        """A delta norm an honest device's reply may reach whatever the adapter (its own noise)."""

    @abstractmethod
    def released(self, accepted: list[tuple[Update, int]]) -> list[tuple[Update, int]]:
        """Validated replies as the server may use them (private fields dropped)."""

    @abstractmethod
    def round_delta(self, server_round: int, updates: list[Update], own_rule: Rule) -> Delta:
        """The round's global delta from the accepted updates (``own_rule``: the strategy's aggregation)."""

    @abstractmethod
    def releases_without_replies(self) -> bool:
        """Whether a round with too few replies still releases a new adapter (DP: noise alone)."""

    @abstractmethod
    def round_metrics(self, accepted: list[Update]) -> dict[str, float]:
        """Metrics the mechanism adds to every round (epsilon spent, ...)."""

    @abstractmethod
    def after_round(self) -> None:
        """Persist what must survive the round (the accountant's state)."""

    @abstractmethod
    def get_state(self) -> dict:
        ...

    @abstractmethod
    def set_state(self, state: dict) -> None:
        ...

    def summary(self) -> None:
        """Log the mechanism's parameters at the start of a run."""


class NoPrivacy(PrivacyLayer):
    def trainer(self) -> str | None:
        return None

    def decorate(self, work: Work) -> Work:
        return work

    def norm_floor(self, global_adapter: Delta) -> float:
        return 0.0

    def released(self, accepted: list[tuple[Update, int]]) -> list[tuple[Update, int]]:
        return accepted

    def round_delta(self, server_round: int, updates: list[Update], own_rule: Rule) -> Delta:
        return own_rule(server_round, updates)

    def releases_without_replies(self) -> bool:
        return False

    def round_metrics(self, accepted: list[Update]) -> dict[str, float]:
        return {}

    def after_round(self) -> None:
        pass

    def get_state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        pass
