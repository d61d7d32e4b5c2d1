"""Multi-host tests need root and iproute2: skip with the reason elsewhere, but never under CI as root
with iproute2, where they must run."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from harness.netns import find_tool, sweep_stale, unavailable_reason


def _skip_or_fail(reason: str) -> None:
    """Skip with ``reason``; but under CI, as root with iproute2, the test must run: fail instead."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and os.geteuid() == 0 and find_tool("ip"):
        pytest.fail(f"CI is root with iproute2, so the multi-host tests must run, but: {reason}")
    pytest.skip(reason)


@pytest.fixture
def netns_ready() -> None:
    """Namespaces can be made here (else skip or, under CI, fail); leftovers of killed runs are swept."""
    reason = unavailable_reason()
    if reason:
        _skip_or_fail(reason)
    sweep_stale()


@pytest.fixture
def skip_or_fail() -> Callable[[str], None]:
    """The skip-or-fail rule, for a test that finds a missing piece later (nftables, Mosquitto)."""
    return _skip_or_fail


@pytest.fixture
def mosquitto_path() -> str:
    found = find_tool("mosquitto")
    if found is None:
        _skip_or_fail("mosquitto is not installed (.ci/run installs it)")
    assert found is not None
    return found
