"""Fusion state as plain arrays and scalars: saved with safetensors + JSON, restored identically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from koala_async.core.fusion import Fusion, FusionConfig
from koala_async.core.staleness import StalenessPolicy

N, C = 30, 5


def _busy_fusion() -> Fusion:
    rng = np.random.default_rng(3)
    fusion = Fusion(N, C, FusionConfig(), StalenessPolicy(max_staleness=5))
    for k in range(8):
        ids = np.sort(rng.choice(N, 12, replace=False))
        counts = rng.integers(0, 9, C) if k % 2 else None
        fusion.add(f"client/{k}.x", "tiny" if k % 3 else "medium", k // 2, rng.normal(size=(12, C)).astype(np.float16),
                   ids, n_samples=int(rng.integers(20, 200)) if k else 2**40, trust=0.5 + k / 20,
                   label_counts=counts, version=4)
    return fusion


def _save(state: dict, directory: Path) -> None:
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    assert all(isinstance(v, (int, float, str)) for v in scalars.values())
    save_file(arrays, str(directory / "fusion.safetensors"))
    (directory / "fusion.json").write_text(json.dumps(scalars))


def _load(directory: Path) -> dict:
    return {**load_file(str(directory / "fusion.safetensors")), **json.loads((directory / "fusion.json").read_text())}


def test_state_round_trips_through_safetensors_and_json(tmp_path: Path) -> None:
    fusion = _busy_fusion()
    _save(fusion.to_state(), tmp_path)
    restored = Fusion.from_state(_load(tmp_path), N, C, fusion.config, fusion.policy)
    for version in (4, 6, 9):
        a, b = fusion.targets(version), restored.targets(version)
        np.testing.assert_allclose(a[0], b[0], atol=1e-7)
        np.testing.assert_array_equal(a[1], b[1])
    assert restored.current_weights(9) == pytest.approx(fusion.current_weights(9))
    # and it carries on the same: size cap, arrival order for eviction
    for f in (fusion, restored):
        f.add("late", "t", 9, np.zeros((N, C), np.float16), None, n_samples=10**9, version=9)
    assert restored.current_weights(9) == pytest.approx(fusion.current_weights(9))
    assert restored.evict_silent(9, 0) == fusion.evict_silent(9, 0)


def test_a_damaged_state_names_the_missing_key() -> None:
    state = _busy_fusion().to_state()
    del state["c/2/ids"]
    with pytest.raises(ValueError, match="c/2/ids"):
        Fusion.from_state(state, N, C, FusionConfig(), StalenessPolicy(max_staleness=5))
    state = _busy_fusion().to_state()
    state["c/1/probs"] = np.zeros((3, C + 1), np.float32)
    with pytest.raises(ValueError, match="c/1/probs"):
        Fusion.from_state(state, N, C, FusionConfig(), StalenessPolicy(max_staleness=5))
