"""The psutil probe: real readings, missing values as None, and device profiles capping it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from koala_async.core.resources import PROFILES, GiB, ResourceSnapshot, apply_profile, get_profile
from koala_async.io import resources


def test_probe_on_this_machine() -> None:
    snap = resources.probe(benchmark_seconds=0.01)
    assert snap.logical_cores and snap.logical_cores >= 1
    assert snap.memory_available and snap.memory_total and snap.memory_available <= snap.memory_total
    assert snap.flops and snap.flops > 1e6
    assert snap.profile is None
    summary = snap.summary()
    assert summary["cores"] == snap.logical_cores and summary["mflops"] > 1


def test_missing_values_are_unknown_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("not on this platform")

    monkeypatch.setattr(psutil, "sensors_battery", lambda: None)  # no battery
    monkeypatch.setattr(psutil, "cpu_freq", lambda: SimpleNamespace(current=0.0, min=0.0, max=0.0))  # container
    monkeypatch.setattr(psutil, "getloadavg", boom)
    monkeypatch.setattr(psutil, "disk_usage", boom)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: None)
    snap = resources.probe(benchmark=False)
    assert snap.battery_percent is None and snap.battery_plugged is None
    assert snap.cpu_freq_mhz is None
    assert snap.load_1m is None and snap.load_per_core is None
    assert snap.disk_free is None and snap.logical_cores is None and snap.flops is None
    assert snap.summary()["battery_percent"] is None


def test_cpu_freq_falls_back_to_current_and_battery_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "cpu_freq", lambda: SimpleNamespace(current=1800.0, min=0.0, max=0.0))
    monkeypatch.setattr(psutil, "sensors_battery",
                        lambda: SimpleNamespace(percent=42.0, secsleft=100, power_plugged=False))
    snap = resources.probe(benchmark=False)
    assert snap.cpu_freq_mhz == 1800.0
    assert snap.battery_percent == 42.0 and snap.battery_plugged is False


def test_profile_caps_the_probe() -> None:
    snap = resources.probe(get_profile("pi-zero"), benchmark_seconds=0.01)
    pi = PROFILES["pi-zero"]
    assert snap.profile == "pi-zero"
    assert snap.logical_cores is not None and snap.logical_cores <= pi.logical_cores
    assert snap.memory_available is not None and snap.memory_available <= pi.memory_available
    assert snap.flops is not None and snap.flops <= pi.flops
    assert snap.load_1m == pi.load_1m  # the simulated device's own load, not the host's


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_only_cap(name: str) -> None:
    weak_host = ResourceSnapshot(logical_cores=1, memory_available=100, flops=1.0, battery_percent=99.0,
                                 battery_plugged=True)
    capped = apply_profile(weak_host, PROFILES[name])
    assert capped.logical_cores == 1 and capped.memory_available == 100 and capped.flops == 1.0
    assert capped.battery_percent == PROFILES[name].battery_percent  # the device's own battery
    unknown = apply_profile(ResourceSnapshot(), PROFILES[name])  # a host that tells nothing
    assert unknown.memory_total == PROFILES[name].memory_total and unknown.flops == PROFILES[name].flops


def test_unknown_profile() -> None:
    with pytest.raises(ValueError, match="pi-zero"):
        get_profile("toaster")
    assert PROFILES["laptop"].memory_total == 16 * GiB
