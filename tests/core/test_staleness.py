"""Staleness weights at known points, their shape, and the cut-off."""

from __future__ import annotations

import itertools
import math

import pytest

from koala_async.core.staleness import POLICIES, StalenessPolicy


def test_constant_is_one_everywhere() -> None:
    policy = StalenessPolicy("constant")
    assert [policy.weight(s) for s in (0, 1, 7, 50)] == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(("a", "s", "expected"), [
    (0.5, 0, 1.0), (0.5, 3, 0.5), (0.5, 8, 1 / 3), (1.0, 3, 0.25), (2.0, 1, 0.25)])
def test_polynomial(a: float, s: int, expected: float) -> None:
    assert StalenessPolicy("polynomial", a=a).weight(s) == pytest.approx(expected)


@pytest.mark.parametrize(("s", "expected"), [(0, 1.0), (2, 1.0), (3, 0.5), (4, 1 / 3), (12, 1 / 11)])
def test_hinge(s: int, expected: float) -> None:
    assert StalenessPolicy("hinge", a=1.0, b=2).weight(s) == pytest.approx(expected)


@pytest.mark.parametrize("kind", POLICIES)
def test_weights_are_monotone_non_increasing_and_in_unit_interval(kind: str) -> None:
    policy = StalenessPolicy(kind, a=0.7, b=3)
    weights = [policy.weight(s) for s in range(60)]
    assert weights[0] == 1.0
    assert all(0 < w <= 1 for w in weights)
    assert all(later <= earlier for earlier, later in itertools.pairwise(weights))
    if kind != "constant":
        assert weights[-1] < 0.5  # it does decay


def test_accepts_cutoff() -> None:
    policy = StalenessPolicy(max_staleness=3)
    assert [policy.accepts(s) for s in (-1, 0, 3, 4, 100)] == [False, True, True, False, False]
    assert StalenessPolicy(max_staleness=0).accepts(0)
    assert not StalenessPolicy(max_staleness=0).accepts(1)


def test_negative_staleness_weight_raises() -> None:
    with pytest.raises(ValueError):
        StalenessPolicy().weight(-1)


def test_invalid_kind_raises() -> None:
    with pytest.raises(ValueError, match="exponential"):
        StalenessPolicy("exponential")


@pytest.mark.parametrize("kw", [{"a": -0.1}, {"b": -1}, {"max_staleness": -1}])
def test_invalid_parameters_raise(kw) -> None:
    with pytest.raises(ValueError):
        StalenessPolicy(**kw)


def test_default_is_fedbuff_inverse_sqrt() -> None:
    policy = StalenessPolicy()
    assert policy.weight(15) == pytest.approx(1 / math.sqrt(16))


# -- damping: how far one batch moves the large model (FedAsync's alpha * w(s)) -----------------

def test_each_arrival_buys_distill_steps_times_its_staleness_weight() -> None:
    from koala_async.core.staleness import damped_steps

    w = StalenessPolicy("polynomial", a=0.5).weight
    assert damped_steps(40, [w(0)]) == 40  # fresh: the full grant
    assert damped_steps(40, [w(8)]) == 13  # 8 stale: a third (round(40 / 3))
    assert damped_steps(80, [w(0), w(3)]) == 60  # 40 * (1 + 0.5)
    assert damped_steps(40, [w(10_000)]) == 1  # never below one step
    assert damped_steps(0, [1.0]) == 0 and damped_steps(40, []) == 0  # nothing granted, nothing fused
