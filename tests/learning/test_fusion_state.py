"""The fusion's contributions in a checkpoint: packed into five arrays, and read back exactly, also
from the older one-map-per-contribution form."""

from __future__ import annotations

import numpy as np

from koala_async.core.fusion import Contribution
from koala_async.learning.fusion_state import pack_contributions, unpack_contributions


def _contributions() -> list[Contribution]:
    rng = np.random.default_rng(0)
    out = []
    for k, n in enumerate((5, 0, 3)):
        probs = rng.random((n, 4)).astype(np.float32)
        out.append(Contribution(sender=f"c{k}", tier=f"t{k}", base_version=k, arrival_weight=0.5 + k,
                                probs=probs, ids=np.arange(n, dtype=np.int64) + k,
                                class_weights=None if k == 1 else rng.random(4)))
    return out


def _same(a: list[Contribution], b: list[Contribution]) -> None:
    assert [c.sender for c in a] == [c.sender for c in b]
    for x, y in zip(a, b, strict=True):
        assert (x.tier, x.base_version, x.arrival_weight) == (y.tier, y.base_version, y.arrival_weight)
        np.testing.assert_array_equal(x.probs, y.probs)
        np.testing.assert_array_equal(x.ids, y.ids)
        assert (x.class_weights is None) == (y.class_weights is None)
        if x.class_weights is not None:
            np.testing.assert_array_equal(x.class_weights, y.class_weights)


def test_packed_contributions_are_five_arrays_and_read_back_exactly() -> None:
    contributions = _contributions()
    packed = pack_contributions(contributions, 4)
    arrays = [k for k, v in packed.items() if isinstance(v, np.ndarray)]
    assert sorted(arrays) == ["class_weights", "ids", "offsets", "probs"]
    _same(unpack_contributions(packed), contributions)
    assert unpack_contributions(pack_contributions([], 4)) == []


def test_the_older_list_form_still_reads() -> None:
    contributions = _contributions()
    old = [{"sender": c.sender, "tier": c.tier, "base_version": c.base_version, "arrival_weight": c.arrival_weight,
            "probs": c.probs, "ids": c.ids, "class_weights": c.class_weights} for c in contributions]
    _same(unpack_contributions(old), contributions)
