"""Capped exponential backoff with full jitter."""

from __future__ import annotations

import random

from koala_async.core.backoff import Backoff


def test_ceiling_grows_then_caps() -> None:
    b = Backoff(initial=0.5, cap=10.0, factor=2.0)
    ceilings = [b.ceiling(n) for n in range(10)]
    assert ceilings[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert ceilings[5:] == [10.0] * 5
    assert b.ceiling(10_000) == 10.0  # no overflow for huge attempt numbers


def test_delays_stay_within_half_initial_and_cap() -> None:
    b = Backoff(initial=0.4, cap=5.0)
    rng = random.Random(1)
    for attempt in range(40):
        for _ in range(20):
            d = b.delay(attempt, rng)
            assert 0.2 <= d <= min(5.0, b.ceiling(attempt))


def test_delays_spread_over_the_window() -> None:
    b = Backoff(initial=0.5, cap=30.0)
    rng = random.Random(7)
    delays = [b.delay(20, rng) for _ in range(500)]
    assert min(delays) < 5 and max(delays) > 25  # full jitter, not a fixed value


def test_two_seeds_give_different_delays_and_one_seed_repeats() -> None:
    b = Backoff()
    a = [b.delay(n, random.Random(1)) for n in range(8)]
    c = [b.delay(n, random.Random(2)) for n in range(8)]
    again = [b.delay(n, random.Random(1)) for n in range(8)]
    assert a != c
    assert a == again
