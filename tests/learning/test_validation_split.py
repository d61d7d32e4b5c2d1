"""The server's validation split: carved from the held-out part, deterministic, named by a
fingerprint; a shard from another derivation is refused with the damage counted."""

from __future__ import annotations

import numpy as np
import pytest

from koala_async.learning import data as D
from koala_async.learning.split_guard import refusal


def test_validation_is_carved_from_the_held_out_part_and_leaves_proxy_and_private_alone() -> None:
    with_val = D.derive("digits", 0, 0.2, 0.25, 0.1)
    without = D.derive("digits", 0, 0.2, 0.25, 0.0)
    assert with_val.parts is not None and without.parts is not None
    parts = with_val.parts
    everything = np.concatenate([parts[p] for p in ("test", "validation", "proxy", "private")])
    assert len(everything) == len(np.unique(everything)) == 1797  # disjoint and complete
    assert set(parts["validation"]) | set(parts["test"]) == set(without.parts["test"])  # from the held-out part
    assert len(parts["validation"]) == pytest.approx(180, abs=5) and len(parts["test"]) == pytest.approx(179, abs=5)
    for part in ("proxy", "private"):  # clients' shards and the proxy set do not move
        np.testing.assert_array_equal(parts[part], without.parts[part])
    assert with_val.validation is not None and sorted(np.unique(with_val.validation.y)) == list(range(10))
    assert with_val.spec is not None and with_val.spec.fingerprint != without.spec.fingerprint  # type: ignore[union-attr]
    assert D.derive("digits", 0, 0.2, 0.25, 0.1).spec == with_val.spec  # deterministic
    with pytest.raises(ValueError, match="validation_fraction"):
        D.split(D.load_digits(), 0, 0.2, 0.25, 0.2)


def test_the_finding_server_seed_3_against_clients_at_test_fraction_0_1_is_refused_with_its_count() -> None:
    """Before the guard, 8 clients at seed 0 and test_fraction 0.1 held 244 of the 359 test images of a
    server at seed 3, and nothing said so."""
    server = D.derive("digits", 3, 0.2, 0.25, 0.0)
    fed = D.federate("digits", 0, 8, 0.5, 0.1, 0.25, 0.0)
    assert server.parts is not None and server.spec is not None
    shards = [fed.dataset_ids(i) for i in range(8)]
    assert int(np.isin(server.parts["test"], np.concatenate(shards)).sum()) == 244  # the finding
    reasons = [refusal(server.spec, fed.splits.spec, ids) for ids in shards]
    assert all(r.startswith("refusing to train") for r in reasons)
    assert "seed 0 (server: 3)" in reasons[0] and "test_fraction 0.1 (server: 0.2)" in reasons[0]
    counted = [int(r.split("; ")[1].split(" of ")[0]) for r in reasons]
    assert sum(counted) == 244 and "among the server's 359 test and validation samples" in reasons[0]
    same = D.federate("digits", 3, 8, 0.5, 0.2, 0.25, 0.0)
    assert refusal(server.spec, same.splits.spec, same.dataset_ids(0)) == ""  # the same derivation trains
