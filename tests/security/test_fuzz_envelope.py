"""Hostile bytes never crash the ingest path: decode + signature check + admission either classify a
payload (accepted, or rejected with a reason) or raise MessageError, never anything else."""

from __future__ import annotations

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koala_async.core.admission import AdmissionContext, admit
from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import Limits, Status, Update, decode, encode
from koala_async.core.info import check_info, fit_info
from koala_async.core.knowledge_gate import KnowledgeGate
from koala_async.core.server_signing import ServerSigner, generate_key
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
SIGNER = ServerSigner(generate_key(), "fed")
GATE = KnowledgeGate("c1", (SIGNER.public_key,), context="fed")  # the seeds are "from" c1


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


# -- deep nesting and crafted containers ------------------------------------------------------------

SOME = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STATUS_SEED = encode(Status(sender="c1", seq=1, role="client", online=True, state="idle", info={"a": 1}))
HOLE = msgpack.packb("HOLE")
FIELDS = ["v", "k", "s", "q", "b", "t", "e", "body", "role", "state", "info", "tier", "n", "proxy", "logits",
          "ids", "labels"]

# Raw msgpack container headers that claim far more than follows, or nest without end.
crafted_heads = st.sampled_from([
    b"\xdd\xff\xff\xff\xff",  # array32 of 4 billion items
    b"\xdf\xff\xff\xff\xff",  # map32 of 4 billion pairs
    b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GiB
    b"\xdb\x7f\xff\xff\xff",  # str32 of 2 GiB
    b"\xc9\x7f\xff\xff\xff\x01",  # ext32, type 1
    b"\xd6\xff\x00\x00\x00\x01",  # fixext4 type -1: a msgpack Timestamp
    b"\xdc\xff\xff",  # array16 of 65535 items
    b"\xc1",  # never used
])


def splice(seed: bytes, field: str, raw: bytes) -> bytes:
    """``seed`` with the value of ``field`` (header or body) replaced by raw msgpack bytes."""
    message = msgpack.unpackb(seed, raw=False)
    (message["body"] if field in message["body"] or field not in message else message)[field] = "HOLE"
    return msgpack.packb(message, use_bin_type=True).replace(HOLE, raw, 1)


def nested(depth: int, as_map: bool, leaf: bytes) -> bytes:
    return (b"\x81\xa1x" if as_map else b"\x91") * depth + leaf


def classify_any(payload: bytes) -> str:
    """decode alone, for every kind: a message kind, or a MessageError reason; nothing else."""
    try:
        return type(decode(payload, LIMITS)).__name__
    except MessageError as exc:
        assert exc.reason and exc.reason.isidentifier()
        assert len(str(exc)) < 300  # details never echo what arrived
        return exc.reason


@SOME
@given(st.sampled_from([*SEEDS, STATUS_SEED]), st.sampled_from(FIELDS), st.integers(1, 3000), st.booleans(),
       st.sampled_from([b"\x00", b"\xc0", b"\x90", b"\x80", b"\xa1x"]))
def test_deep_nesting_anywhere_is_classified(seed: bytes, field: str, depth: int, as_map: bool,
                                             leaf: bytes) -> None:
    reason = classify_any(splice(seed, field, nested(depth, as_map, leaf)))
    if depth > LIMITS.max_depth:
        assert reason == "too_deep"
    _record(reason)


@SOME
@given(st.sampled_from([*SEEDS, STATUS_SEED]), st.sampled_from(FIELDS), crafted_heads, st.binary(max_size=64),
       st.integers(0, 40), st.booleans())
def test_crafted_containers_are_classified(seed: bytes, field: str, head: bytes, tail: bytes, depth: int,
                                           as_map: bool) -> None:
    _record(classify_any(splice(seed, field, nested(depth, as_map, head + tail))))


@SOME
@given(msgpack_values, st.integers(0, 6), st.booleans())
def test_arbitrary_status_info_is_classified(value, depth: int, as_map: bool) -> None:
    info = {"v": value}
    for _ in range(depth):
        info = {"x": info} if as_map else {"x": [info]}
    payload = splice(STATUS_SEED, "info", msgpack.packb(info, use_bin_type=True))
    reason = classify_any(payload)
    assert reason in ("Status", "too_deep", "too_large", "bad_info"), reason


@SOME
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats() | st.text(max_size=400),
                    lambda inner: st.lists(inner, max_size=300) | st.tuples(inner, inner)
                    | st.dictionaries(st.text(max_size=300) | st.integers(), inner, max_size=300),
                    max_leaves=200))
def test_fit_info_always_yields_what_check_info_accepts(value) -> None:
    fitted = fit_info({"value": value, "more": [value, value]})
    assert check_info(fitted) is fitted
    decoded = decode(encode(Status(sender="c1", seq=1, role="client", online=True, info=fitted)))
    assert msgpack.packb(decoded.info) == msgpack.packb(fitted)  # (NaN != NaN, so compare bytes)


@SOME
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.integers(0, 255)),
                                        min_size=1, max_size=6))
def test_the_knowledge_gate_classifies_mutated_server_messages(seed: bytes, ops) -> None:
    payload = mutate(SIGNER.seal(seed), ops)
    verdict = GATE.check(payload)
    assert not verdict.accepted or payload == SIGNER.seal(seed)
    _record(verdict.reason)


def test_the_new_reasons_were_seen() -> None:
    # Runs after the property tests above: deep, oversized and ext payloads met their own reasons.
    assert {"too_deep", "too_large"} <= set(classified), classified
