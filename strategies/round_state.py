"""What a strategy keeps between rounds and across a resume: one round's ledger, the run's counters, the faults.

A checkpoint stores ``FleetFedAvg.get_state()``, which is made of :meth:`RunCounters.get_state`,
:meth:`FaultLog.get_state` and the privacy layer's state (flat keys: checkpoints of earlier runs still load).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet.devices import Device
from protocol.messages import Work
from strategies.update_validation import Checked


@dataclass
class RoundLedger:
    """What happened to the fleet in one round (before aggregation)."""

    sent: dict[int, Device] = field(default_factory=dict)  # node id -> device
    offline: int = 0
    skipped_memory: int = 0
    bytes_down_each: int = 0
    bytes_down: dict[int, int] = field(default_factory=dict)  # device index -> bytes of its train message
    work: dict[int, Work] = field(default_factory=dict)  # device index -> the work it was sent (priced from it)
    failing: set[int] = field(default_factory=set)  # device indices that fail mid-training (never sent)
    checked: Checked = field(default_factory=Checked)  # validation of the replies
    norm_bound: float | None = None  # the round's default absolute bound on a delta's L2 norm


@dataclass
class RunCounters:
    """The simulated clock, the global adapter's version (work carries it; stale replies are rejected) and the
    median accepted delta norm of recent rounds (the default norm bound)."""

    sim_time_s: float = 0.0
    model_version: int = 0  # global adapters produced from at least one update so far
    norm_history: list[float] = field(default_factory=list)

    def get_state(self) -> dict:
        return {"sim_time_s": self.sim_time_s, "model_version": self.model_version,
                "norm_history": list(self.norm_history)}

    def set_state(self, state: dict) -> None:
        self.sim_time_s = float(state.get("sim_time_s", 0.0))
        self.model_version = int(state.get("model_version", 0))
        self.norm_history = [float(n) for n in state.get("norm_history", [])]


class FaultLog:
    """Every failed, rejected or late device with its reason, and every failed round (MLflow faults.json)."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def add(self, server_round: int, attempt: int, device: int, outcome: str, reason: str, detail: str) -> None:
        self.events.append({"round": server_round, "attempt": attempt, "device": device, "outcome": outcome,
                            "reason": reason, "detail": detail[:300]})

    def record_round(self, server_round: int, attempt: int, ledger: RoundLedger, late: list) -> None:
        """A round's failed (mid-training draw or bad reply), rejected and late devices."""
        rows = [(d, "failed", "mid_training", "failure_rate draw") for d in sorted(ledger.failing)]
        rows += [(v.device_index, "failed", v.reason, v.detail) for v in ledger.checked.failed]
        rows += [(v.device_index, "rejected", v.reason, v.detail) for v in ledger.checked.rejected]
        rows += [(u.device_index, "late", "deadline", f"{t.total_s:.3g} s") for u, _, t in late]
        for device, outcome, reason, detail in rows:
            self.add(server_round, attempt, device, outcome, reason, detail)

    def get_state(self) -> dict:
        return {"fault_log": list(self.events)}

    def set_state(self, state: dict) -> None:
        self.events = list(state.get("fault_log", []))
