"""The split's name: keys and fingerprint, what a mismatch says, and the map it travels as."""

from __future__ import annotations

import numpy as np
import pytest

from koala_async.core.envelope import Knowledge, decode, encode
from koala_async.core.splits import SplitSpec, fingerprint, mismatch
from koala_async.errors import MessageError

PARTS = {"test": np.array([0, 5]), "validation": np.array([1]), "proxy": np.array([2, 3]),
         "private": np.array([4, 6, 7])}


def spec(seed: int = 0, test: float = 0.2, parts: dict[str, np.ndarray] = PARTS) -> SplitSpec:
    return SplitSpec("digits", seed, test, 0.1, 0.25, fingerprint("digits", seed, test, 0.1, 0.25, parts))


def test_the_fingerprint_covers_keys_and_index_sets() -> None:
    base = spec().fingerprint
    assert spec().fingerprint == base  # deterministic
    assert spec(seed=1).fingerprint != base
    assert spec(test=0.3).fingerprint != base
    moved = {**PARTS, "test": np.array([0, 4]), "private": np.array([5, 6, 7])}  # same keys, other sets
    assert spec(parts=moved).fingerprint != base


def test_a_mismatch_names_each_differing_key_with_both_values() -> None:
    reason = mismatch(spec(seed=3), spec(seed=0, test=0.1))
    assert "seed 0 (server: 3)" in reason and "test_fraction 0.1 (server: 0.2)" in reason
    assert "dataset" not in reason
    assert mismatch(spec(), spec()) == ""
    assert mismatch(None, spec()) == "" and mismatch(spec(), None) == ""  # files: nothing to compare


def test_the_split_travels_in_the_knowledge_and_a_bad_one_is_refused() -> None:
    k = Knowledge(sender="server", seq=1, version=2, proxy_id="p", num_classes=10, temperature=2.0, logits=None,
                  split=spec(seed=3))
    assert decode(encode(k)).split == spec(seed=3)  # type: ignore[union-attr]
    assert decode(encode(Knowledge(sender="server", seq=1, version=2, proxy_id="p", num_classes=10,
                                   temperature=2.0, logits=None))).split is None  # type: ignore[union-attr]
    raw = {**spec().to_map(), "test": 1.5}
    with pytest.raises(ValueError, match="split.test"):
        SplitSpec.from_map(raw)
    import msgpack

    payload = msgpack.unpackb(encode(k), raw=False)
    payload["body"]["split"]["seed"] = "three"
    with pytest.raises(MessageError) as err:
        decode(msgpack.packb(payload, use_bin_type=True))
    assert err.value.reason == "bad_field" and "split.seed" in str(err.value)
