"""The simulated clock: what a round would have taken on the real devices.

A reply's device time = its compute (priced by fleet/pricing.py under ``cost.clock``) plus the time to move its
bytes over the device's downlink and uplink. A synchronous round lasts as long as its slowest reply.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceTime:
    compute_s: float
    download_s: float
    upload_s: float
    bytes_down: int = 0  # what the transfer times were charged for
    bytes_up: int = 0

    @property
    def total_s(self) -> float:
        return self.compute_s + self.download_s + self.upload_s


def round_time(times: list[DeviceTime]) -> float:
    return max((t.total_s for t in times), default=0.0)
