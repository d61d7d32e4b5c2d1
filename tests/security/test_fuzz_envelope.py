"""Hostile bytes never crash the ingest path: decode + signature check + admission either classify a
payload (accepted, or rejected with a reason) or raise MessageError, never anything else."""

from __future__ import annotations

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koala_async.core.admission import AdmissionContext, admit
from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import Limits, Update, decode, encode
from koala_async.core.signing import sign, verify
from koala_async.core.staleness import StalenessPolicy
from koala_async.errors import MessageError

N, C = 12, 4
CTX = AdmissionContext(version=5, proxy_id="p", n_proxy=N, num_classes=C, policy=StalenessPolicy())
LIMITS = Limits(max_payload_bytes=64 * 1024, max_samples=1000, max_classes=100)
KEYS = {"c1": b"k1", "c2": b"k2"}
SEEDS = [encode(Update(sender="c1", seq=s, base_version=s % 7, tier="t", n_samples=10, proxy_id="p",
                       logits=np.random.default_rng(s).normal(size=(N, C)).astype(np.float16),
                       sample_ids=None if s % 2 else np.arange(N, dtype=np.uint32),
                       label_counts=np.ones(C, dtype=np.uint32) if s % 3 else None))
         for s in range(6)]
classified: dict[str, int] = {}


def classify(payload: bytes, keys: dict[str, bytes] | None = None) -> str:
    """What the server's ingest path does with ``payload``: a reason, or ``accepted``."""
    try:
        message = decode(verify(payload, "c1", keys), LIMITS)
    except MessageError as exc:
        assert exc.reason and exc.reason.isidentifier()
        return exc.reason
    if not isinstance(message, Update):
        return "wrong_kind"
    decision = admit(message, "c1", CTX, SeqWindow())
    return decision.reason


def _record(reason: str) -> None:
    classified[reason] = classified.get(reason, 0) + 1


def mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, value in ops:
        if not buf:
            break
        pos %= len(buf)
        if kind == 0:
            buf[pos] = value
        elif kind == 1:
            del buf[pos:pos + 1 + value % 8]
        elif kind == 2:
            buf[pos:pos] = bytes([value]) * (1 + value % 5)
        else:
            del buf[pos:]
    return bytes(buf)


FAST = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=20)


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_are_classified(payload: bytes) -> None:
    _record(classify(payload))


@FAST
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.integers(0, 255)),
                                        min_size=1, max_size=6))
def test_mutated_updates_are_classified(seed: bytes, ops: list[tuple[int, int, int]]) -> None:
    _record(classify(mutate(seed, ops)))


@FAST
@given(st.sampled_from(SEEDS), st.dictionaries(st.sampled_from(["v", "k", "s", "q", "b", "t", "body"]),
                                               msgpack_values, max_size=3),
       st.dictionaries(st.sampled_from(["tier", "n", "proxy", "logits", "ids", "labels"]), msgpack_values,
                       max_size=3))
def test_structurally_altered_envelopes_are_classified(seed: bytes, head: dict, body: dict) -> None:
    raw = msgpack.unpackb(seed, raw=False)
    raw.update(head)
    if isinstance(raw.get("body"), dict):
        raw["body"].update(body)
    _record(classify(msgpack.packb(raw, use_bin_type=True)))


@FAST
@given(st.sampled_from(SEEDS), st.binary(max_size=4), st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.integers(0, 255)), max_size=3))
def test_signed_payloads_are_checked_or_rejected(seed: bytes, key: bytes, ops) -> None:
    payload = mutate(sign(seed, key or b"k1"), ops) if ops else sign(seed, key or b"k1")
    reason = classify(payload, KEYS)
    if not ops and (key or b"k1") == b"k1":
        assert reason == "accepted"
    elif not ops:
        assert reason == "bad_signature"
    _record(reason)


def test_every_reason_seen_is_a_known_one() -> None:
    # Runs after the property tests in this module: the fuzzers exercised many distinct reasons.
    assert sum(classified.values()) >= 1000
    assert {"not_msgpack", "accepted"} <= set(classified)
    assert len(classified) >= 8, classified
