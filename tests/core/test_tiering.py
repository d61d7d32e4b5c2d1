"""The tier choice and the readiness policy: pure, table-driven, no torch and no clock."""

from __future__ import annotations

import pytest

from koala_async.core.resources import PROFILES, GiB, MiB, ResourceSnapshot, apply_profile
from koala_async.core.tiering import (
    TierChoice,
    TierPolicy,
    TierSpec,
    choose_tier,
    next_tier,
    readiness,
    samples_per_epoch,
)

# Numbers as measured for the digits image tiers (koala tiers --kind image).
CATALOG = (
    TierSpec("tiny", "image", 1_210, 7_133, 5_056.0, 46_496),
    TierSpec("small", "image", 9_802, 42_637, 180_096.0, 732_832),
    TierSpec("medium", "image", 38_282, 156_493, 679_680.0, 1_761_952),
)
POLICY = TierPolicy(epoch_budget_s=0.1)
SAMPLES = 256  # per epoch


def snap(**kw: object) -> ResourceSnapshot:
    base = {"logical_cores": 4, "physical_cores": 4, "memory_total": 4 * GiB, "memory_available": 2 * GiB,
            "load_1m": 0.4, "flops": 1e10, "disk_free": 10 * GiB}
    return ResourceSnapshot(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("resources, expected", [
    (snap(), "medium"),                                          # plenty of everything
    (snap(flops=1e9), "small"),                                  # medium 0.17 s/epoch > 0.1 s
    (snap(flops=1e8), "tiny"),                                   # small 0.46 s/epoch > 0.1 s
    (snap(flops=1e6), "tiny"),                                   # nothing fits: still the smallest
    (snap(memory_available=2 * MiB), "small"),                   # medium needs 1.7 MiB > half of 2 MiB
    (snap(memory_available=200 * 1024), "tiny"),                 # only tiny's 45 KiB fits in 100 KiB
    (snap(disk_free=100_000), "small"),                          # medium's 156 KB do not fit on disk
    (snap(flops=None, memory_available=None), "medium"),         # unknown never excludes
    (snap(battery_percent=20.0, battery_plugged=False), "small"),  # low battery: one tier down
    (snap(battery_percent=20.0, battery_plugged=True), "medium"),  # plugged in: no matter
    (snap(battery_percent=None, battery_plugged=None), "medium"),  # no battery at all
    (snap(load_1m=8.0), "small"),                                # 2.0 per core: one tier down
    (snap(load_1m=8.0, battery_percent=20.0, battery_plugged=False), "tiny"),  # both: two down
    (snap(flops=1e8, battery_percent=5.0, battery_plugged=False), "tiny"),     # never below the smallest
])
def test_choose_tier_picks_the_largest_affordable(resources: ResourceSnapshot, expected: str) -> None:
    choice = choose_tier(resources, CATALOG, POLICY, SAMPLES)
    assert choice.tier == expected
    assert choice.reason


def test_reasons_name_the_blocker_and_the_unknowns() -> None:
    assert "s/epoch > budget" in choose_tier(snap(flops=1e9), CATALOG, POLICY, SAMPLES).reason
    assert "unknown FLOP/s" in choose_tier(snap(flops=None), CATALOG, POLICY, SAMPLES).reason
    assert "nothing fits" in choose_tier(snap(flops=1e6), CATALOG, POLICY, SAMPLES).reason
    assert "battery 20%" in choose_tier(snap(battery_percent=20.0, battery_plugged=False), CATALOG, POLICY,
                                        SAMPLES).reason


@pytest.mark.parametrize("profile, expected", [("pi-zero", "tiny"), ("pi-4", "small"), ("laptop", "medium")])
def test_device_profiles_choose_three_tiers(profile: str, expected: str) -> None:
    host = snap(logical_cores=2, memory_available=20 * GiB, flops=1e11, load_1m=1.9)
    resources = apply_profile(host, PROFILES[profile])
    # The scenario's shards: 61..182 samples -> 125..374 samples per epoch while distilling.
    for n in (61, 182):
        assert choose_tier(resources, CATALOG, POLICY, samples_per_epoch(n, 32, True)).tier == expected


@pytest.mark.parametrize("current, chosen, expected", [
    ("medium", "small", "small"),   # the resources dropped: forced down
    ("small", "medium", "small"),   # could grow: keep the trained model
    ("small", "small", "small"),
    ("gone", "tiny", "tiny"),       # a current tier outside the catalog is replaced
])
def test_next_tier_only_moves_down(current: str, chosen: str, expected: str) -> None:
    assert next_tier(current, TierChoice(chosen, "", None), CATALOG) == expected


@pytest.mark.parametrize("resources, trained, knowledge, data, waited, max_wait, ready, reason", [
    (snap(), False, False, False, 0.0, 0.0, True, "first training"),
    (snap(), True, False, False, 0.0, 0.0, True, "training on"),  # the default: never idle for news
    (snap(load_1m=16.0), True, False, False, 0.0, 0.0, False, "load 4.00/core"),  # resources still gate
    (snap(battery_percent=12.0, battery_plugged=False), True, False, False, 0.0, 0.0, False, "battery 12%"),
    (snap(), True, True, False, 0.0, 30.0, True, "new knowledge"),
    (snap(), True, False, True, 0.0, 30.0, True, "new data"),
    (snap(), True, False, False, 5.0, 30.0, False, "no new knowledge"),  # an energy-saving device waits
    (snap(), True, False, False, 31.0, 30.0, True, "nothing new for 31 s"),
    (snap(battery_percent=12.0, battery_plugged=False), False, True, True, 0.0, 0.0, False, "battery 12% unplugged"),
    (snap(battery_percent=12.0, battery_plugged=True), False, True, True, 0.0, 0.0, True, "first training"),
    (snap(load_1m=16.0), False, True, True, 0.0, 0.0, False, "load 4.00/core"),
    (snap(load_1m=None), False, False, False, 0.0, 0.0, True, "first training"),
])
def test_readiness(resources: ResourceSnapshot, trained: bool, knowledge: bool, data: bool, waited: float,
                   max_wait: float, ready: bool, reason: str) -> None:
    policy = TierPolicy(epoch_budget_s=0.1, max_wait_s=max_wait)
    verdict = readiness(resources, policy, trained_before=trained, new_knowledge=knowledge, new_data=data,
                        waited_s=waited)
    assert verdict.ready is ready
    assert reason in verdict.reason
    assert verdict.reason.startswith("ready" if ready else "waiting")


def test_samples_per_epoch_counts_proxy_batches() -> None:
    assert samples_per_epoch(61, 32, distilling=False) == 61
    assert samples_per_epoch(61, 32, distilling=True) == 61 + 64


@pytest.mark.parametrize("kwargs", [{"memory_share": 0}, {"epoch_budget_s": 0},
                                    {"low_battery": 10, "critical_battery": 20}, {"high_load": 3, "defer_load": 2}, {"max_wait_s": -1}])
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TierPolicy(**kwargs)  # type: ignore[arg-type]


def test_empty_catalog_is_an_error() -> None:
    with pytest.raises(ValueError):
        choose_tier(snap(), (), POLICY, SAMPLES)
