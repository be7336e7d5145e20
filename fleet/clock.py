"""The simulated clock: what a round would have taken on the real devices.

A reply's device time = its host-measured compute, scaled from the host's measured FLOP rate to the device's
effective one (vendor peak x ``fleet.compute_efficiency``), plus the time to move its bytes over the device's
downlink and uplink. A synchronous round lasts as long as its slowest reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.devices import Device


@dataclass(frozen=True)
class DeviceTime:
    compute_s: float
    download_s: float
    upload_s: float

    @property
    def total_s(self) -> float:
        return self.compute_s + self.download_s + self.upload_s


def device_time(
    device: Device, host_compute_s: float, host_gflops: float, efficiency: float, bytes_down: int, bytes_up: int
) -> DeviceTime:
    device_gflops = device.profile.peak_gflops * efficiency
    return DeviceTime(
        compute_s=host_compute_s * host_gflops / device_gflops,
        download_s=bytes_down * 8 / (device.profile.downlink_mbps * 1e6),
        upload_s=bytes_up * 8 / (device.profile.uplink_mbps * 1e6),
    )


def round_time(times: list[DeviceTime]) -> float:
    return max((t.total_s for t in times), default=0.0)
