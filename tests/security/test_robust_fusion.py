"""Robust fusion: two of ten clients sending a permuted class mapping barely move the fused targets
under ``trimmed`` and ``filtered``, while ``mean`` follows them; honest federations lose nothing."""

from __future__ import annotations

import numpy as np
import pytest

from koala_async.core.fusion import Fusion, FusionConfig
from koala_async.core.staleness import StalenessPolicy
from koala_async.tools.bench.robustness import poison

N, C = 300, 10


def _fused_accuracy(method: str, adversaries: int, seed: int = 0) -> tuple[float, set[str]]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, C, N)
    fusion = Fusion(N, C, FusionConfig(method=method), StalenessPolicy())
    for k in range(10):
        z = rng.normal(size=(N, C))
        z[np.arange(N), truth] += 2.5  # honest but noisy clients
        if k < adversaries:
            z = 3 * poison(z, seed + k)  # and confident liars
        fusion.add(f"c{k}", "t", 0, z.astype(np.float16), None, 1.0, None)
    targets, mask = fusion.targets(0)
    assert mask.all()
    return float((targets.argmax(axis=1) == truth).mean()), fusion.outliers()


@pytest.mark.parametrize("method", ["median", "trimmed", "filtered"])
def test_robust_methods_resist_two_permuting_clients(method: str) -> None:
    clean, _ = _fused_accuracy(method, 0)
    attacked, _ = _fused_accuracy(method, 2)
    assert attacked >= clean - 0.03


def test_filtered_drops_exactly_the_liars_and_nobody_honest() -> None:
    assert _fused_accuracy("filtered", 2)[1] == {"c0", "c1"}
    assert _fused_accuracy("filtered", 0)[1] == set()


def test_mean_is_steered_by_confident_liars() -> None:
    clean, _ = _fused_accuracy("mean", 0)
    attacked, _ = _fused_accuracy("mean", 2)
    robust, _ = _fused_accuracy("filtered", 2)
    assert attacked < robust
    assert clean - attacked > 0.02
