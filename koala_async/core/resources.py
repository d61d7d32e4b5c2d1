"""What a device can afford, as plain data: a resource snapshot and simulated device profiles.

The probe in :mod:`koala_async.io.resources` fills a :class:`ResourceSnapshot` from psutil and a short
compute benchmark; everything that decides from it (tier choice, readiness) lives in
:mod:`koala_async.core.tiering` and sees only this frozen value. A field the platform cannot tell
(no battery, ``cpu_freq().max == 0`` in a container) is ``None``: "unknown", never zero.

A :class:`DeviceProfile` lets one machine host a realistic mixed fleet: it *caps* what the probe
reports (cores, memory, FLOP/s) and *replaces* what belongs to the simulated device alone (its load,
its battery), through :func:`apply_profile`, the same code path real measurements take. The client
then also slows its training to the profile's FLOP/s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class ResourceSnapshot:
    """One measurement of a device. ``None`` means unknown."""

    logical_cores: int | None = None
    physical_cores: int | None = None
    cpu_freq_mhz: float | None = None  # the maximum frequency, or the current one when no maximum is known
    memory_total: int | None = None  # bytes
    memory_available: int | None = None  # bytes
    load_1m: float | None = None  # 1-minute load average (runnable processes, all cores)
    battery_percent: float | None = None  # None: no battery (mains-powered) or unknown
    battery_plugged: bool | None = None
    disk_free: int | None = None  # bytes free where the node keeps its files
    flops: float | None = None  # achieved FLOP/s of a small matmul benchmark
    profile: str | None = None  # the device profile applied, if any

    @property
    def load_per_core(self) -> float | None:
        if self.load_1m is None or not self.logical_cores:
            return None
        return self.load_1m / self.logical_cores

    def summary(self) -> dict[str, Any]:
        """A compact, msgpack-friendly view for status messages (MiB, MFLOP/s, rounded)."""
        def mib(v: int | None) -> int | None:
            return None if v is None else int(v // MiB)

        return {
            "profile": self.profile,
            "cores": self.logical_cores,
            "physical_cores": self.physical_cores,
            "cpu_mhz": None if self.cpu_freq_mhz is None else round(self.cpu_freq_mhz),
            "mem_total_mib": mib(self.memory_total),
            "mem_available_mib": mib(self.memory_available),
            "load_1m": None if self.load_1m is None else round(self.load_1m, 2),
            "battery_percent": None if self.battery_percent is None else round(self.battery_percent, 1),
            "battery_plugged": self.battery_plugged,
            "disk_free_mib": mib(self.disk_free),
            "mflops": None if self.flops is None else round(self.flops / 1e6, 1),
        }


@dataclass(frozen=True)
class DeviceProfile:
    """A simulated device class. Caps are upper bounds on the host's measurements; ``load_1m`` and
    the battery replace the host's (the host's load is mostly the *other* simulated devices)."""

    name: str
    logical_cores: int
    physical_cores: int
    cpu_freq_mhz: float
    memory_total: int
    memory_available: int
    flops: float  # achieved FLOP/s the device is taken to reach on the benchmark
    load_1m: float | None = 0.1
    battery_percent: float | None = None  # None: mains-powered
    battery_plugged: bool | None = None
    disk_free: int | None = None


def _cap(measured: float | None, cap: float | None) -> Any:
    if cap is None:
        return measured
    if measured is None:
        return cap
    return min(measured, cap)


def apply_profile(snapshot: ResourceSnapshot, profile: DeviceProfile) -> ResourceSnapshot:
    """The snapshot the simulated device would have measured on this host."""
    return replace(
        snapshot,
        logical_cores=_cap(snapshot.logical_cores, profile.logical_cores),
        physical_cores=_cap(snapshot.physical_cores, profile.physical_cores),
        cpu_freq_mhz=_cap(snapshot.cpu_freq_mhz, profile.cpu_freq_mhz),
        memory_total=_cap(snapshot.memory_total, profile.memory_total),
        memory_available=_cap(snapshot.memory_available, profile.memory_available),
        disk_free=_cap(snapshot.disk_free, profile.disk_free),
        flops=_cap(snapshot.flops, profile.flops),
        load_1m=profile.load_1m,
        battery_percent=profile.battery_percent,
        battery_plugged=profile.battery_plugged if profile.battery_percent is not None else None,
        profile=profile.name,
    )


# Achieved FLOP/s are for a single-threaded fp32 128x128 matmul in PyTorch, the probe's benchmark,
# not the vendor's peak: a Pi Zero (ARM11, 1 GHz, no NEON) is taken at 150 MFLOP/s, one Pi 4 core
# (Cortex-A72) at 800 MFLOP/s, a laptop core with AVX2 at 40 GFLOP/s. Plausible orders of magnitude,
# not measurements of those boards.
PROFILES: dict[str, DeviceProfile] = {p.name: p for p in (
    DeviceProfile("pi-zero", 1, 1, 1000, 512 * MiB, 200 * MiB, 1.5e8, disk_free=4 * GiB),
    DeviceProfile("pi-4", 4, 4, 1500, 4 * GiB, 2 * GiB, 8.0e8, disk_free=16 * GiB),
    DeviceProfile("laptop", 8, 4, 3000, 16 * GiB, 8 * GiB, 4.0e10, battery_percent=80, battery_plugged=False,
                  disk_free=100 * GiB),
    # A phone-class device on a nearly empty battery: it should wait rather than train.
    DeviceProfile("phone-low-battery", 8, 8, 2400, 6 * GiB, 2 * GiB, 5.0e9, battery_percent=12,
                  battery_plugged=False, disk_free=8 * GiB),
)}


def get_profile(name: str) -> DeviceProfile:
    if name not in PROFILES:
        raise ValueError(f"unknown device profile {name!r}; known: {sorted(PROFILES)}")
    return PROFILES[name]
