"""Who is online, who fails mid-round, and who is too late: the fleet's availability model.

Three independent causes keep a selected device's update out of a round (docs/faults.md):

* **Offline** (``DeviceClass.availability``): not eligible this round (phones train only when idle and
  charging). Decided in :meth:`FleetFedAvg.select`.
* **Fails mid-training** (``DeviceClass.failure_rate``): started, never replied (app killed, network lost).
  Decided here before sending, seeded by (seed, round, attempt), so the simulation does not spend host time
  on work whose reply would never arrive, and the same run always fails the same devices.
* **Late** (``federation.deadline_s``): replied, but its device time on the simulated clock exceeds the
  round's deadline. With over-selection, only the first ``cohort_size`` replies to arrive are kept.

Every decision is a pure function of (seed, round, attempt) and the replies, so a resumed run repeats it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from fleet.devices import Device

T = TypeVar("T")


def selection_size(cohort_size: int, over_selection: float) -> int:
    """How many devices to ask so that ``cohort_size`` replies are likely (Bonawitz et al. 2019 ask 130%)."""
    return max(cohort_size, math.ceil(cohort_size * (1.0 + over_selection) - 1e-9))


def failing_devices(cohort: Sequence[Device], seed: int) -> set[int]:
    """Indices of the devices of ``cohort`` that fail before replying (each by its class's failure_rate)."""
    rng = np.random.default_rng(seed)
    draws = rng.random(len(cohort))
    return {d.index for d, u in zip(cohort, draws) if u < d.profile.failure_rate}


def on_time(
    arrivals: Sequence[tuple[T, float]], deadline_s: float | None, keep: int | None
) -> tuple[list[T], list[T], list[T]]:
    """Split ``(item, device_time_s)`` pairs into (kept, late, surplus), each in input order.

    Late: device time beyond the deadline. Surplus (over-selection): on time, but after the ``keep``
    earliest had arrived (ties by input order); the round closed without them.
    """
    ordered = sorted(range(len(arrivals)), key=lambda i: (arrivals[i][1], i))
    kept, late, surplus = set(), set(), set()
    for i in ordered:
        if deadline_s is not None and arrivals[i][1] > deadline_s:
            late.add(i)
        elif keep is not None and len(kept) >= keep:
            surplus.add(i)
        else:
            kept.add(i)
    pick = lambda chosen: [arrivals[i][0] for i in range(len(arrivals)) if i in chosen]  # noqa: E731
    return pick(kept), pick(late), pick(surplus)


def round_duration(kept_times: Sequence[float], deadline_s: float | None, missing: int) -> float:
    """Simulated length of a synchronous round.

    The slowest kept reply; but when replies are missing (failed or late) and a deadline is set, the server
    waits until the deadline before closing the round.
    """
    slowest = max(kept_times, default=0.0)
    if deadline_s is not None and missing > 0:
        return max(slowest, deadline_s)
    return slowest
