"""Robust fusion: valid messages from one of ten clients cannot take the fused targets over.

Honest clients are noisy but right; an adversary sends a permuted class mapping, one-hot logits of
+-65504 on one class, or a permuted mapping claiming 2**40 samples. The default fusion (``mean`` with
the server's bounds) stays within 2 points of its clean accuracy; the same mean without the bounds
(what the server ran before) is taken over. ``trimmed`` and ``filtered`` resist two permuting clients.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from koala_async.core.fusion import Fusion, FusionConfig
from koala_async.core.staleness import StalenessPolicy
from koala_async.tools.bench.robustness import attack, halves, parse_overrides, poison

N, C = 300, 10
# what the server ran before: absolute confidence weighting, sqrt(n_samples), nothing capped
UNBOUNDED: dict[str, Any] = {"max_certainty": 1.0, "max_weight_ratio": 1e18, "confidence": "absolute", "sample_weighting": "sqrt"}


def _fused_accuracy(method: str, adversaries: int, kind: str = "permuted", seed: int = 0,
                    **config: Any) -> tuple[float, set[str]]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, C, N)
    fusion = Fusion(N, C, FusionConfig(method=method, **config), StalenessPolicy())
    for k in range(10):
        z = rng.normal(size=(N, C))
        z[np.arange(N), truth] += 2.5  # honest but noisy clients
        n = int(rng.integers(50, 150))
        if k < adversaries:
            z, n = attack(kind, z, n, seed + k)
        fusion.add(f"c{k}", "t", 0, z.astype(np.float16), None, n_samples=n)
    targets, mask = fusion.targets(0)
    assert mask.all()
    return float((targets.argmax(axis=1) == truth).mean()), fusion.outliers()


@pytest.mark.parametrize("kind", ["permuted", "extreme_logits", "huge_n_samples"])
def test_default_fusion_loses_under_two_points_to_one_attacker_of_ten(kind: str) -> None:
    clean, _ = _fused_accuracy("mean", 0)
    attacked, _ = _fused_accuracy("mean", 1, kind)
    assert attacked >= clean - 0.02, (clean, attacked)


@pytest.mark.parametrize("kind", ["extreme_logits", "huge_n_samples"])
def test_without_the_bounds_one_attacker_takes_the_mean_over(kind: str) -> None:
    clean, _ = _fused_accuracy("mean", 0, **UNBOUNDED)
    attacked, _ = _fused_accuracy("mean", 1, kind, **UNBOUNDED)
    assert attacked < clean - 0.3, (clean, attacked)


@pytest.mark.parametrize("method", ["median", "trimmed", "filtered"])
def test_robust_methods_resist_two_permuting_clients(method: str) -> None:
    clean, _ = _fused_accuracy(method, 0)
    attacked, _ = _fused_accuracy(method, 2)
    assert attacked >= clean - 0.03


def test_filtered_drops_exactly_the_liars_and_nobody_honest() -> None:
    assert _fused_accuracy("filtered", 2)[1] == {"c0", "c1"}
    assert _fused_accuracy("filtered", 2, "extreme_logits")[1] == {"c0", "c1"}
    assert _fused_accuracy("filtered", 0)[1] == set()


def test_poison_is_a_derangement() -> None:
    z = np.arange(20, dtype=np.float32).reshape(2, 10)
    moved = poison(z, 3)
    assert sorted(moved[0]) == sorted(z[0]) and not (moved == z).any()


def test_the_tool_tunes_on_a_validation_half_disjoint_from_the_test_half() -> None:
    y = np.repeat(np.arange(10), 37)
    val, test = halves(y, 0)
    assert not set(val) & set(test) and len(val) + len(test) == len(y)
    assert (np.bincount(y[val]) == 18).all()  # stratified
    assert parse_overrides(["max_certainty=0.2", "class_weighting=false"]) == FusionConfig(
        max_certainty=0.2, class_weighting=False)
    with pytest.raises(ValueError, match="p_max"):
        parse_overrides(["p_max=0.5"])


def test_attacks_are_valid_messages() -> None:
    z = np.random.default_rng(0).normal(size=(5, 10)).astype(np.float16)
    extreme, n = attack("extreme_logits", z, 40, 1)
    assert np.isfinite(extreme).all() and extreme.dtype == np.float16 and n == 40
    assert (extreme.argmax(axis=1) == extreme[0].argmax()).all() and np.abs(extreme).max() == 65504
    assert attack("huge_n_samples", z, 40, 1)[1] == 2**40
