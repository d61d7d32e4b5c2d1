"""Staleness as the fusion weighs it: an update accepted while a version was being distilled is fused
into the next one, one version older than it was at acceptance."""

from __future__ import annotations

from types import SimpleNamespace

from koala_async.core.admission import Decision
from koala_async.core.server_state import Arrival, ServerState


def arrival(base: int) -> Arrival:
    return Arrival(SimpleNamespace(sender="c", seq=1, base_version=base), b"", 0.0)


def test_published_counts_staleness_at_the_version_that_fused_each_arrival() -> None:
    state = ServerState(lambda *a: Decision(True))
    # version 3 fused arrivals built on 2 (fresh), 1 and 0 (accepted at staleness 0 while v1 and v2 were
    # being distilled: the server was still at their base version then)
    state.published(3, [arrival(2), arrival(1), arrival(0)], now=1.0, elapsed=1.0, accuracy=0.5)
    m = state.metrics
    assert (m.fused, m.fused_staleness_sum, m.fused_staleness_max) == (3, 3, 2)
    assert m.fused_staleness_hist == {"0": 1, "1": 1, "2": 1}
    snap = state.snapshot(now=1.0)
    assert snap["fused_staleness_mean"] == 1.0 and snap["fused_staleness_max"] == 2
    state.published(4, [], now=2.0, elapsed=2.0, accuracy=0.5)  # a version with nothing fused changes nothing
    assert state.metrics.fused == 3
