"""Server-side bounds: probabilities mixed toward uniform, size factors capped by recent senders."""

from __future__ import annotations

import math

import numpy as np
import pytest

from koala_async.core.bounds import SizeWindow, bound_probs, p_max


def test_bound_probs_caps_the_top_and_keeps_rows_below_it() -> None:
    rows = np.array([[1.0, 0.0, 0.0, 0.0], [0.7, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1]])
    out = bound_probs(rows, 0.4)  # cap 0.25 + 0.4 * 0.75 = 0.55
    assert p_max(0.4, 4) == pytest.approx(0.55)
    np.testing.assert_allclose(out.max(axis=1)[:2], 0.55, atol=1e-6)
    np.testing.assert_allclose(out[2], rows[2], atol=1e-7)  # already below: untouched
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    assert (out.argmax(axis=1) == rows.argmax(axis=1)).all()
    np.testing.assert_allclose(bound_probs(rows, 1.0), rows, atol=1e-7)
    with pytest.raises(ValueError):
        bound_probs(rows, 1.5)


def test_size_window_cap_is_ratio_times_median_of_distinct_senders() -> None:
    window = SizeWindow(window=4, ratio=2.0)
    assert window.cap == math.inf
    assert window.observe("a", 10.0) == 20.0
    window.observe("b", 12.0)
    window.observe("c", 8.0)
    assert window.cap == pytest.approx(20.0)  # 2 x median(10, 12, 8)
    for _ in range(10):  # one sender repeating a huge claim keeps one entry
        window.observe("liar", 2.0**20)
    assert window.cap == pytest.approx(2 * 11.0)  # median(10, 12, 8, 2**20)
    window.observe("d", 9.0)  # the window holds 4: "a" (oldest) leaves
    assert window.cap == pytest.approx(2 * np.median([12.0, 8.0, 2.0**20, 9.0]))


def test_size_window_state_round_trip() -> None:
    window = SizeWindow(3, 2.0)
    for sender, factor in (("a", 4.0), ("b", 9.0), ("c", 1.0)):
        window.observe(sender, factor)
    restored = SizeWindow(3, 2.0)
    restored.load_state(window.to_state())
    assert restored.cap == window.cap
    assert restored.observe("d", 2.0) == window.observe("d", 2.0)  # same oldest-first eviction
    with pytest.raises(ValueError):
        SizeWindow(0, 2.0)
    with pytest.raises(ValueError):
        SizeWindow(3, 0.5)
