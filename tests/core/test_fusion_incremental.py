"""The incremental fusion equals a straightforward full recomputation, forgets what it should, and its
cost per call does not grow with the number of clients."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koala_async.core.fusion import Fusion, FusionConfig, softmax
from koala_async.core.staleness import StalenessPolicy

N, C = 12, 4
SENDERS = ("a", "b", "c", "d", "e", "f")


def reference_targets(entries: dict[str, dict], version: int, config: FusionConfig,
                      policy: StalenessPolicy) -> tuple[np.ndarray, np.ndarray]:
    """The fused mean written out directly, one sample and one contribution at a time."""
    acc = np.zeros((N, C))
    total = np.zeros((N, C))
    covered = np.zeros(N, dtype=bool)
    for e in entries.values():
        if version - e["base"] > policy.max_staleness:
            continue
        decay = policy.weight(max(version - e["base"], 0))
        confs: np.ndarray = e["probs"].max(axis=1) ** config.confidence_power
        if config.confidence == "relative":
            confs = np.minimum(confs / confs.mean(), config.max_weight_ratio)
        for j, i in enumerate(e["ids"]):
            p = e["probs"][j]
            conf = confs[j]
            shares = e["shares"] if e["shares"] is not None else np.full(C, 1.0 / C)
            w = e["trust"] * decay * conf * shares
            acc[i] += w * p
            total[i] += w
            covered[i] = True
    out = np.full((N, C), 1.0 / C)
    for i in np.flatnonzero(covered):
        row = np.array([acc[i, c] / total[i, c] if total[i, c] > 0 else 0.0 for c in range(C)])
        row = np.clip(row, 1e-8, None)
        out[i] = row / row.sum()
    return out, covered


def bounded(p: np.ndarray, p_max: float) -> np.ndarray:
    """Mix each row with uniform until its top probability is at most ``p_max``."""
    out = p.astype(np.float64).copy()
    for r in range(len(out)):
        top = out[r].max()
        if top > p_max:
            e = (top - p_max) / (top - 1.0 / C)
            out[r] = (1 - e) * out[r] + e / C
    return out


operation = st.tuples(
    st.sampled_from(("add", "add", "add", "forget", "evict", "bump", "check")),
    st.integers(0, len(SENDERS) - 1),
    st.integers(0, 2**31 - 1),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operation, min_size=1, max_size=40),
       kind=st.sampled_from(("constant", "polynomial", "hinge")),
       certainty=st.sampled_from((1.0, 0.5, 0.2)),
       power=st.sampled_from((0.0, 1.0, 2.0)),
       confidence=st.sampled_from(("relative", "absolute")),
       max_staleness=st.integers(0, 6))
def test_incremental_targets_equal_a_full_recomputation(ops, kind, certainty, power, confidence,
                                                        max_staleness) -> None:
    policy = StalenessPolicy(kind, a=0.7, b=1, max_staleness=max_staleness)
    config = FusionConfig(sample_weighting="none", max_certainty=certainty, confidence_power=power,
                          confidence=confidence)
    p_max = 1 / C + certainty * (1 - 1 / C)
    fusion = Fusion(N, C, config, policy)
    entries: dict[str, dict] = {}
    version = 0
    for op, who, seed in ops:
        rng = np.random.default_rng(seed)
        sender = SENDERS[who]
        if op == "add":
            base = version - int(rng.integers(0, max_staleness + 1))
            ids = np.sort(rng.choice(N, int(rng.integers(1, N + 1)), replace=False))
            logits = (rng.normal(size=(len(ids), C)) * rng.choice([0.1, 1.0, 10.0, 1e4])).astype(np.float16)
            counts = rng.integers(0, 5, C) if rng.random() < 0.5 else None
            trust = float(rng.uniform(0.25, 1.0))
            fusion.add(sender, "t", base, logits, ids, trust=trust, label_counts=counts, version=version)
            shares = counts / counts.sum() if counts is not None and counts.sum() > 0 else None
            entries.pop(sender, None)
            entries[sender] = {"base": base, "ids": ids, "trust": trust, "shares": shares, "stamp": version,
                               "probs": bounded(softmax(logits, config.temperature), p_max)}
        elif op == "forget":
            assert fusion.forget(sender) == (sender in entries)
            entries.pop(sender, None)
        elif op == "evict":
            silent = int(rng.integers(0, 4))
            expected = [s for s, e in entries.items() if version - e["stamp"] > silent]
            assert fusion.evict_silent(version, silent) == expected
            for s in expected:
                del entries[s]
        elif op == "bump":
            version += int(rng.integers(1, 4))
        targets, mask = fusion.targets(version)
        want, covered = reference_targets(entries, version, config, policy)
        entries = {s: e for s, e in entries.items() if version - e["base"] <= max_staleness}  # expired
        assert sorted(fusion.contributions) == sorted(entries)
        np.testing.assert_array_equal(mask, covered)
        np.testing.assert_allclose(targets, want, atol=2e-6)
    # memory follows the active clients: nothing left once they are gone
    for sender in list(entries):
        fusion.forget(sender)
    assert not fusion.contributions and not fusion._sums.buckets


def test_a_departed_client_stops_counting_under_the_constant_policy() -> None:
    """Goodbye / last will: ``forget`` takes the contribution out of the targets at once."""
    fusion = Fusion(1, 2, FusionConfig(temperature=1.0, max_certainty=1.0, confidence_power=0.0), StalenessPolicy("constant"))
    fusion.add("stays", "t", 0, np.log(np.array([[0.8, 0.2]])), None)
    fusion.add("leaves", "t", 0, np.log(np.array([[0.2, 0.8]])), None)
    np.testing.assert_allclose(fusion.targets(5)[0][0], [0.5, 0.5], atol=1e-6)
    assert fusion.forget("leaves") and not fusion.forget("leaves")
    np.testing.assert_allclose(fusion.targets(5)[0][0], [0.8, 0.2], atol=1e-6)


def test_evict_silent_takes_the_senders_not_heard_from_and_only_them() -> None:
    fusion = Fusion(3, 2, FusionConfig(), StalenessPolicy("constant", max_staleness=100))
    z = np.zeros((3, 2), dtype=np.float32)
    fusion.add("early", "t", 0, z, None, version=0)
    fusion.add("middle", "t", 2, z, None, version=3)
    fusion.add("late", "t", 5, z, None, version=6)
    fusion.add("early", "t", 6, z, None, version=7)  # heard from again: now the most recent
    assert fusion.evict_silent(8, 4) == ["middle"]
    assert fusion.evict_silent(8, 4) == []
    assert fusion.evict_silent(20, 4) == ["late", "early"]
    assert not fusion.contributions
    assert not fusion.targets(20)[1].any()


def test_contributions_older_than_max_staleness_are_forgotten() -> None:
    policy = StalenessPolicy("polynomial", max_staleness=3)
    fusion = Fusion(2, 2, FusionConfig(), policy)
    fusion.add("old", "t", 0, np.zeros((1, 2), dtype=np.float32), np.array([0]))
    fusion.add("new", "t", 2, np.zeros((1, 2), dtype=np.float32), np.array([1]))
    assert fusion.targets(3)[1].tolist() == [True, True]
    assert fusion.targets(4)[1].tolist() == [False, True]  # 4 versions old: gone, not decayed
    assert sorted(fusion.contributions) == ["new"]
    assert fusion.expire(6) == ["new"]


def _timed_targets(clients: int) -> float:
    rng = np.random.default_rng(0)
    n = 2000
    fusion = Fusion(n, 10, FusionConfig(), StalenessPolicy(max_staleness=3))
    for k in range(clients):
        ids = rng.choice(n, 50, replace=False)
        fusion.add(f"c{k}", "t", k % 4, rng.normal(size=(50, 10)).astype(np.float16), ids, version=3)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        fusion.targets(3)
        best = min(best, time.perf_counter() - started)
    return best


def test_targets_cost_does_not_grow_with_the_number_of_clients() -> None:
    """2,000 clients in 4 staleness buckets cost what 20 do: O(buckets N C), not O(clients)."""
    small, large = _timed_targets(20), _timed_targets(2000)
    assert large < 3 * small + 0.002, (small, large)


@pytest.mark.parametrize(("field", "call"), [
    ("logits shape", lambda f: f.add("x", "t", 0, np.zeros((3, 5), np.float32), None)),
    ("non-finite", lambda f: f.add("x", "t", 0, np.full((3, 4), np.nan, np.float32), None)),
    ("sample ids", lambda f: f.add("x", "t", 0, np.zeros((2, 4), np.float32), np.array([1, 1]))),
    ("sample ids", lambda f: f.add("x", "t", 0, np.zeros((1, 4), np.float32), np.array([3]))),
    ("trust", lambda f: f.add("x", "t", 0, np.zeros((3, 4), np.float32), None, trust=0.0)),
    ("label_counts", lambda f: f.add("x", "t", 0, np.zeros((3, 4), np.float32), None,
                                     label_counts=np.array([1, -1, 0, 0]))),
])
def test_bad_input_is_refused_and_loses_nothing(field: str, call) -> None:
    fusion = Fusion(3, 4, FusionConfig(), StalenessPolicy())
    fusion.add("x", "t", 0, np.eye(3, 4, dtype=np.float32), None)
    before = fusion.targets(0)[0]
    with pytest.raises(ValueError):
        call(fusion)
    np.testing.assert_array_equal(fusion.targets(0)[0], before)
    assert list(fusion.contributions) == ["x"]
