"""The proxy set on the wire (core/proxy_manifest.py) and its assembly from chunks (core/proxy_assembly.py):
pure, no broker. A chunk is taken only where the signed manifest says it belongs, and the whole only
when it hashes to the proxy id that names dtype, shape and bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import msgpack
import numpy as np
import pytest

from koala_async.core.envelope import Limits, ProxyChunk, ProxyManifest, decode, encode
from koala_async.core.knowledge_gate import KnowledgeGate
from koala_async.core.proxy_assembly import ProxyAssembly
from koala_async.core.proxy_manifest import array_bytes, build_manifest, chunks, content_id
from koala_async.core.server_signing import ServerSigner, generate_key
from koala_async.core.topics import Topics
from koala_async.errors import MessageError

RNG = np.random.default_rng(7)
PIXELS = RNG.integers(0, 256, size=(300, 3, 8, 8), dtype=np.uint8)  # 57,600 bytes
CHUNK = 5000  # 12 chunks, the last one short (57,600 = 11 * 5,000 + 2,600)
KEY = generate_key()


def manifest(x: np.ndarray = PIXELS, chunk: int = CHUNK) -> ProxyManifest:
    return build_manifest(x, num_classes=10, chunk_bytes=chunk, sender="server", seq=3)


def all_chunks(m: ProxyManifest, x: np.ndarray = PIXELS) -> list[ProxyChunk]:
    # through the wire, as a client gets them: bytes, not the server's views
    return [decode(encode(c)) for c in chunks(m, array_bytes(x), "server")]  # type: ignore[misc]


def test_a_manifest_names_dtype_shape_chunks_and_round_trips_the_wire() -> None:
    m = manifest()
    assert (m.dtype, m.shape, m.total_bytes, m.n_chunks) == ("|u1", (300, 3, 8, 8), 57_600, 12)
    assert m.span(11) == (55_000, 57_600)
    back = decode(encode(m))
    assert back == m
    assert len(encode(m)) < 1_000  # small: 12 hashes and a few fields


def test_the_proxy_id_covers_dtype_shape_and_bytes() -> None:
    base = content_id("|u1", PIXELS.shape, array_bytes(PIXELS))
    assert base == manifest().proxy_id
    flipped = PIXELS.copy()
    flipped[123, 0, 0, 0] ^= 1
    assert content_id("|u1", PIXELS.shape, array_bytes(flipped)) != base
    assert content_id("|u1", (300, 192), array_bytes(PIXELS)) != base  # same bytes, another shape
    as_float = PIXELS.astype(np.float32)
    assert manifest(as_float).proxy_id != base and manifest(as_float).dtype == "<f4"


def test_chunks_arriving_in_any_order_assemble_the_array_in_its_own_dtype() -> None:
    m = manifest()
    assembly = ProxyAssembly(m)
    parts = all_chunks(m)
    for index in RNG.permutation(len(parts)):
        assert assembly.offer(parts[index], int(index)) is None
        assert assembly.complete == (assembly.received == m.n_chunks)
    assert assembly.verify() and assembly.missing() == []
    out = assembly.array()
    assert out.dtype == np.uint8 and out.shape == PIXELS.shape and np.array_equal(out, PIXELS)
    assert np.shares_memory(out, assembly.backing)  # one copy: a view of the buffer, not a second array


def test_missing_lists_what_is_not_held_yet() -> None:
    m = manifest()
    assembly = ProxyAssembly(m)
    parts = all_chunks(m)
    for index in (0, 3, 11):
        assembly.offer(parts[index])
    assert assembly.missing() == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert not assembly.complete and not assembly.verify()


def test_bad_and_unexpected_chunks_are_refused_and_counted_by_reason() -> None:
    m = manifest()
    assembly = ProxyAssembly(m)
    good = all_chunks(m)[4]
    other = manifest(PIXELS[:200])
    tampered = bytearray(good.data)
    tampered[17] ^= 0xFF
    cases = [
        (dataclasses.replace(good, proxy_id=other.proxy_id), None, "wrong_proxy"),
        (dataclasses.replace(good, index=12), None, "bad_index"),
        (good, 5, "bad_index"),  # the payload says 4, its topic said 5
        (dataclasses.replace(good, data=bytes(good.data)[:-1]), None, "bad_chunk_size"),
        (dataclasses.replace(good, data=bytes(tampered)), None, "bad_chunk_hash"),
    ]
    for chunk, index, reason in cases:
        assert assembly.offer(chunk, index) == reason
    assert not assembly.held.any()  # nothing refused was written
    assert assembly.offer(good, 4) is None
    assert assembly.offer(good, 4) == "duplicate_chunk"
    assert dict(assembly.rejected) == {"wrong_proxy": 1, "bad_index": 2, "bad_chunk_size": 1,
                                       "bad_chunk_hash": 1, "duplicate_chunk": 1}
    assert assembly.received == 1


def test_resume_keeps_the_chunks_a_buffer_already_holds_and_only_those() -> None:
    m = manifest()
    buffer = np.zeros(m.total_bytes, np.uint8)
    flat = PIXELS.reshape(-1)
    buffer[:3 * CHUNK] = flat[:3 * CHUNK]  # chunks 0-2 written before a restart
    buffer[7 * CHUNK:8 * CHUNK - 10] = flat[7 * CHUNK:8 * CHUNK - 10]  # chunk 7 torn: fetched again
    assembly = ProxyAssembly(m, buffer)
    assert assembly.resume() == 3
    assert assembly.missing() == list(range(3, 12)) and assembly.received == 0
    for chunk in all_chunks(m)[3:]:
        assert assembly.offer(chunk) is None
    assert assembly.verify() and np.array_equal(assembly.array(), PIXELS)


def test_a_buffer_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="buffer of 10 bytes"):
        ProxyAssembly(manifest(), np.zeros(10, np.uint8))


def test_a_small_proxy_set_is_one_chunk() -> None:
    small = RNG.random((40, 64), dtype=np.float32)
    m = build_manifest(small, 10, 4 * 1024 * 1024, "server")
    assert m.n_chunks == 1 and m.dtype == "<f4"
    assembly = ProxyAssembly(m)
    assert assembly.offer(all_chunks(m, small)[0], 0) is None
    assert assembly.verify() and np.array_equal(assembly.array(), small)


def _raw_manifest(**body_changes) -> bytes:
    raw = msgpack.unpackb(encode(manifest()), raw=False)
    raw["body"].update(body_changes)
    return msgpack.packb(raw, use_bin_type=True)


@pytest.mark.parametrize(("changes", "reason"), [
    ({"proxy": "ab/+/#cdef"}, "bad_field"),  # a proxy id is a topic level: hex only
    ({"dtype": "<f8"}, "bad_dtype"),
    ({"shape": [300]}, "bad_array"),
    ({"shape": [300, 3, 8, 0]}, "bad_array"),
    ({"hashes": [b"\0" * 32] * 11}, "bad_field"),  # one hash per chunk, no fewer
    ({"hashes": [b"\0" * 31] * 12}, "bad_field"),
    ({"chunk": 0}, "bad_field"),
    ({"chunk": 9 * 1024 * 1024}, "bad_field"),  # a chunk would not fit one payload
    ({"shape": [200_000, 3, 32, 32], "hashes": []}, "too_large"),  # 614 MB > a small client's limit
])
def test_a_bad_manifest_is_refused_with_a_reason(changes: dict, reason: str) -> None:
    limits = Limits(max_proxy_bytes=100 * 1024 * 1024)
    with pytest.raises(MessageError) as err:
        decode(_raw_manifest(**changes), limits)
    assert err.value.reason == reason


def test_manifests_are_signed_and_chunks_are_checked_by_their_hash_instead() -> None:
    signer = ServerSigner(KEY, context="fed")
    gate = KnowledgeGate("server", (KEY.public_key(),), context="fed")
    m = dataclasses.replace(manifest(), epoch=5)
    assert gate.check(signer.seal(encode(m)), "proxy_manifest").accepted
    assert gate.check(encode(m), "proxy_manifest").reason == "unsigned"
    chunk = encode(all_chunks(m)[0])
    verdict = gate.check(chunk, "proxy_chunk")
    assert verdict.accepted and isinstance(verdict.message, ProxyChunk)
    assert gate.check(chunk, "proxy_manifest").reason == "wrong_kind"
    older = dataclasses.replace(m, epoch=4)
    assert gate.check(signer.seal(encode(older)), "proxy_manifest").reason == "version_regressed"


def test_chunk_topics_name_proxy_and_index() -> None:
    topics = Topics("fed")
    topic = topics.proxy_chunk("0123abcd0123abcd", 36)
    assert topic == "koala/fed/server/proxy/0123abcd0123abcd/36"
    assert topics.chunk_of(topic) == ("0123abcd0123abcd", 36)
    for bad in (topics.proxy, "koala/other/server/proxy/ab/1", f"{topics.proxy}/ab/x", f"{topics.proxy}/ab/²"):
        assert topics.chunk_of(bad) is None


def test_a_150_mb_proxy_set_is_cut_into_chunks_under_the_broker_packet_limit() -> None:
    """The shipped Mosquitto refuses packets over 16 MiB; a chunk envelope is the chunk plus ~100 bytes."""
    m = ProxyManifest(sender="server", seq=1, proxy_id="ab" * 8, dtype="|u1", shape=(50_000, 3, 32, 32),
                      num_classes=10, chunk_bytes=4 * 1024 * 1024, hashes=(hashlib.sha256().digest(),) * 37)
    assert m.n_chunks == math.ceil(153_600_000 / (4 * 1024 * 1024)) == 37
    decode(encode(m))  # passes the default limits
    body = np.zeros(m.chunk_bytes, np.uint8)
    payload = encode(ProxyChunk(sender="server", seq=1, proxy_id=m.proxy_id, index=0, data=memoryview(body)))
    assert len(payload) - m.chunk_bytes < 200 and len(payload) < 16 * 1024 * 1024
