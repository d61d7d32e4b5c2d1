"""The resource probe: what this device has right now, from psutil and a ~50 ms compute benchmark.

Every reading is guarded: a value the platform cannot give (no battery, ``cpu_freq()`` missing or
reporting a maximum of 0 in a container, no load average on Windows) becomes ``None``, never an
exception. With a :class:`~koala_async.core.resources.DeviceProfile` the measurement is capped to the
simulated device by the pure :func:`~koala_async.core.resources.apply_profile`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psutil

from koala_async.core.resources import DeviceProfile, ResourceSnapshot, apply_profile

log = logging.getLogger(__name__)
T = TypeVar("T")


def _safe(read: Callable[[], T]) -> T | None:
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - psutil raises platform-specific errors; unknown is fine
        log.debug("resource reading unavailable: %s", exc)
        return None


def _positive(value: Any) -> Any:
    return value if value is not None and value > 0 else None


def cpu_freq_mhz() -> float | None:
    freq = _safe(psutil.cpu_freq)
    if freq is None:
        return None
    return _positive(getattr(freq, "max", None)) or _positive(getattr(freq, "current", None))


def benchmark_flops(seconds: float = 0.05, size: int = 128) -> float | None:
    """Achieved FLOP/s of a single-threaded fp32 ``size x size`` matmul, timed for about ``seconds``."""
    try:
        import torch
    except ImportError:
        return None
    a, b = torch.randn(size, size), torch.randn(size, size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.mm(a, b)  # warm-up
        count, started = 0, time.perf_counter()
        while True:
            torch.mm(a, b)
            count += 1
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
    finally:
        torch.set_num_threads(threads)
    return 2.0 * size**3 * count / elapsed


def probe(profile: DeviceProfile | None = None, *, disk_path: str = ".", benchmark: bool = True,
          benchmark_seconds: float = 0.05) -> ResourceSnapshot:
    """Measure this device (capped to ``profile`` when given). Blocks for about ``benchmark_seconds``."""
    memory = _safe(psutil.virtual_memory)
    battery = _safe(psutil.sensors_battery) if hasattr(psutil, "sensors_battery") else None
    load = _safe(psutil.getloadavg) if hasattr(psutil, "getloadavg") else _safe(os.getloadavg)
    disk = _safe(lambda: psutil.disk_usage(disk_path))
    snap = ResourceSnapshot(
        logical_cores=_positive(_safe(lambda: psutil.cpu_count(logical=True))),
        physical_cores=_positive(_safe(lambda: psutil.cpu_count(logical=False))),
        cpu_freq_mhz=cpu_freq_mhz(),
        memory_total=getattr(memory, "total", None),
        memory_available=getattr(memory, "available", None),
        load_1m=None if not load else float(load[0]),
        battery_percent=None if battery is None else _safe(lambda: float(battery.percent)),
        battery_plugged=None if battery is None else getattr(battery, "power_plugged", None),
        disk_free=getattr(disk, "free", None),
        flops=_safe(lambda: benchmark_flops(benchmark_seconds)) if benchmark else None,
    )
    return apply_profile(snap, profile) if profile is not None else snap


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory so far (``getrusage`` max RSS; None where unavailable)."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux KiB
    except (ImportError, OSError, ValueError):
        return _safe(lambda: int(psutil.Process().memory_info().rss))
