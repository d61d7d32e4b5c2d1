"""FedBuff's pure pieces: admission of weights built on any kept version, and the buffered update."""

from __future__ import annotations

import numpy as np
import pytest

from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import Weights
from koala_async.core.fedbuff import admit_buffered, apply_deltas
from koala_async.core.staleness import StalenessPolicy

LAYOUT = {"w": (2, 2), "b": (2,)}


def weights(base: int, seq: int = 1, sender: str = "c1", value: float = 1.0) -> Weights:
    return Weights(sender=sender, seq=seq, base_version=base, model="m", n_samples=10,
                   params={"w": np.full((2, 2), value, np.float32), "b": np.full(2, value, np.float32)})


@pytest.mark.parametrize("base, version, kept, max_staleness, reason, staleness", [
    (5, 5, {5}, 10, "accepted", 0),
    (3, 5, {3, 4, 5}, 10, "accepted", 2),      # no rounds: an older base is fine, and says how old
    (3, 5, {4, 5}, 10, "stale", 2),            # its base weights are no longer kept: no delta to take
    (3, 5, {3, 4, 5}, 1, "stale", 2),          # past max_staleness
    (6, 5, {5}, 10, "future_version", 0),
])
def test_admission(base: int, version: int, kept: set[int], max_staleness: int, reason: str,
                   staleness: int) -> None:
    d = admit_buffered(weights(base), "c1", version, "m", LAYOUT, SeqWindow(), kept,
                       StalenessPolicy(max_staleness=max_staleness))
    assert (d.reason, d.staleness) == (reason, staleness)
    assert d.accepted is (reason == "accepted")


def test_admission_keeps_fedavgs_checks() -> None:
    policy, kept = StalenessPolicy(), {0}
    assert admit_buffered(weights(0), "c2", 0, "m", LAYOUT, SeqWindow(), kept, policy).reason == "sender_mismatch"
    assert admit_buffered(weights(0), "c1", 0, "other", LAYOUT, SeqWindow(), kept, policy).reason == "wrong_model"
    bad = Weights(sender="c1", seq=1, base_version=0, model="m", n_samples=10, params={"w": np.zeros((2, 2), np.float32)})
    assert admit_buffered(bad, "c1", 0, "m", LAYOUT, SeqWindow(), kept, policy).reason == "missing_parameter"


def test_deltas_are_averaged_over_the_buffer_and_scaled_by_staleness() -> None:
    current = {"w": np.zeros(3, np.float32)}
    base = {"w": np.zeros(3, np.float32)}
    # two arrivals: +2 fresh (weight 1) and +4 stale (weight 0.5): mean of (2, 2) = 2
    out = apply_deltas(current, [({"w": np.full(3, 2, np.float32)}, base, 1.0),
                                 ({"w": np.full(3, 4, np.float32)}, base, 0.5)])
    np.testing.assert_allclose(out["w"], 2.0)
    # a delta is taken against the version it was built on, applied to the current model
    moved = apply_deltas({"w": np.full(3, 10, np.float32)},
                         [({"w": np.full(3, 1, np.float32)}, {"w": np.zeros(3, np.float32)}, 1.0)], lr=0.5)
    np.testing.assert_allclose(moved["w"], 10.5)
    assert out["w"].dtype == np.float32


def test_nothing_to_apply_is_an_error() -> None:
    with pytest.raises(ValueError):
        apply_deltas({"w": np.zeros(1, np.float32)}, [])
    with pytest.raises(ValueError):
        apply_deltas({"w": np.zeros(1, np.float32)}, [({"w": np.zeros(1)}, {"w": np.zeros(1)}, float("nan"))])
