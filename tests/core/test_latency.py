"""Latency summaries in constant time: quantiles within the bucket resolution, exact counts and maxima,
and a recent window that forgets what is older than it."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from koala_async.core.latency import LatencyStats


def test_empty_and_single_sample() -> None:
    stats = LatencyStats(window=10)
    assert stats.summary() == {"count": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    stats.add(now=100.0, latency=0.25)
    for summary in (stats.summary(), stats.summary(now=100.0)):
        assert summary["count"] == 1 and summary["max"] == 0.25 and summary["p99"] == 0.25


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.001, 100.0), min_size=1, max_size=500))
def test_quantiles_are_within_the_bucket_resolution_of_the_true_samples(samples: list[float]) -> None:
    stats = LatencyStats(window=1e9)
    for i, s in enumerate(samples):
        stats.add(float(i), s)
    ordered = sorted(samples)
    summary = stats.summary()
    assert summary["count"] == len(samples) and summary["max"] == round(max(samples), 4)
    for q, key in ((0.5, "p50"), (0.99, "p99")):
        true = ordered[max(0, int(np.ceil(q * len(ordered))) - 1)]  # the same rank definition
        assert abs(summary[key] - true) <= 0.021 * true + 1e-4, (key, summary[key], true)


def test_the_recent_window_forgets_old_samples_but_the_total_keeps_them() -> None:
    stats = LatencyStats(window=30)
    for t in range(100):
        stats.add(float(t), 5.0 if t < 50 else 0.1)
    recent = stats.summary(now=99.0)
    assert recent["count"] == 31 and recent["max"] == 0.1  # slots 69..99
    assert stats.summary()["count"] == 100 and stats.summary()["max"] == 5.0
    assert stats.summary(now=1000.0)["count"] == 0  # nothing recent once time moved on
