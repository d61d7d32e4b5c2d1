"""The namespace harness says why it cannot run, and refuses bad topologies before touching anything."""

from __future__ import annotations

import pytest

from harness import netns
from harness.netns import Impairment, Topology


def test_not_root_is_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert "root" in (netns.unavailable_reason() or "")


def test_missing_ip_is_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns, "find_tool", lambda name: None)
    assert "iproute2" in (netns.unavailable_reason() or "")


@pytest.mark.parametrize(("hosts", "impair", "match"), [
    (["a", "a"], {}, "distinct"),
    ([], {}, "at least one"),
    (["a"], {"b": Impairment(10, 1)}, "unknown host"),
])
def test_bad_topologies_are_refused(hosts: list[str], impair: dict[str, Impairment], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Topology(hosts, impair=impair)


def test_bad_impairment_is_refused() -> None:
    with pytest.raises(ValueError):
        Impairment(delay_ms=-1)
    with pytest.raises(ValueError):
        Impairment(loss_pct=100)


def test_too_small_a_subnet_is_refused() -> None:
    with pytest.raises(ValueError, match="too few"):
        Topology(["a", "b", "c"], subnet="10.0.0.0/30")
