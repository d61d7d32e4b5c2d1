"""The wire format: every kind survives a round trip, and every malformed payload is named."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from koala_async.core.envelope import Knowledge, Limits, ProxySet, Status, Update, decode, encode, pack_array
from koala_async.errors import MessageError


def _logits(n: int = 6, c: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, c)).astype(np.float16)


def _update(**kw) -> Update:
    base = {"sender": "c1", "seq": 7, "base_version": 3, "tier": "image-small", "n_samples": 120,
            "proxy_id": "abc123", "logits": _logits(), "sent_at": 12.5}
    base.update(kw)
    return Update(**base)


# -- round trips ---------------------------------------------------------------------------------

def test_update_round_trip_without_ids_or_labels() -> None:
    msg = _update()
    out = decode(encode(msg))
    assert isinstance(out, Update)
    assert (out.sender, out.seq, out.base_version, out.tier, out.n_samples, out.proxy_id, out.sent_at) == \
        ("c1", 7, 3, "image-small", 120, "abc123", 12.5)
    assert out.logits.dtype == np.float16
    np.testing.assert_array_equal(out.logits, msg.logits)
    assert out.sample_ids is None
    assert out.label_counts is None


def test_update_round_trip_with_sample_ids_and_label_counts() -> None:
    ids = np.array([0, 3, 5, 9, 11, 40], dtype=np.uint32)
    labels = np.array([10, 0, 3, 7], dtype=np.uint32)
    msg = _update(sample_ids=ids, label_counts=labels)
    out = decode(encode(msg))
    assert isinstance(out, Update)
    np.testing.assert_array_equal(out.sample_ids, ids)
    assert out.sample_ids.dtype == np.uint32
    np.testing.assert_array_equal(out.label_counts, labels)
    np.testing.assert_array_equal(out.logits, msg.logits)


def test_update_float32_logits_are_sent_as_float16() -> None:
    logits = np.array([[0.1, 2.5], [-1.0, 3.25]], dtype=np.float32)
    out = decode(encode(_update(logits=logits)))
    assert out.logits.dtype == np.float16
    np.testing.assert_allclose(out.logits.astype(np.float32), logits, atol=1e-3)


def test_knowledge_round_trip_with_logits() -> None:
    logits = _logits(10, 5, seed=1)
    msg = Knowledge(sender="server", seq=4, version=17, proxy_id="p1", num_classes=5, temperature=3.0,
                    logits=logits, accepted_tiers=("image-tiny", "image-small"), sent_at=99.0)
    out = decode(encode(msg))
    assert isinstance(out, Knowledge)
    assert (out.sender, out.seq, out.version, out.proxy_id, out.num_classes, out.temperature) == \
        ("server", 4, 17, "p1", 5, 3.0)
    assert out.accepted_tiers == ("image-tiny", "image-small")
    assert out.sent_at == 99.0
    np.testing.assert_array_equal(out.logits, logits)


def test_knowledge_round_trip_without_logits() -> None:
    msg = Knowledge(sender="server", seq=1, version=0, proxy_id="p1", num_classes=10, temperature=2.5,
                    logits=None)
    out = decode(encode(msg))
    assert isinstance(out, Knowledge)
    assert out.logits is None
    assert out.version == 0 and out.num_classes == 10 and out.temperature == 2.5
    assert out.accepted_tiers == ()


def test_proxy_set_round_trip() -> None:
    inputs = np.random.default_rng(2).random((12, 1, 8, 8), dtype=np.float32)
    msg = ProxySet(sender="server", seq=2, proxy_id="deadbeef", inputs=inputs, num_classes=10, sent_at=1.0)
    out = decode(encode(msg))
    assert isinstance(out, ProxySet)
    assert out.proxy_id == "deadbeef" and out.num_classes == 10 and out.sender == "server"
    assert out.inputs.dtype == np.float32 and out.inputs.shape == (12, 1, 8, 8)
    np.testing.assert_array_equal(out.inputs, inputs)


def test_status_round_trip() -> None:
    info = {"tier": "image-small", "accepted": 3, "nested": {"a": [1, 2]}, "ratio": 0.5}
    msg = Status(sender="c2", seq=5, role="client", online=True, state="training", info=info, sent_at=3.0)
    out = decode(encode(msg))
    assert isinstance(out, Status)
    assert (out.sender, out.seq, out.role, out.online, out.state) == ("c2", 5, "client", True, "training")
    assert out.info == info
    off = decode(encode(Status(sender="c2", seq=6, role="client", online=False)))
    assert off.online is False


def test_pack_array_refuses_unsupported_dtype() -> None:
    with pytest.raises(ValueError):
        pack_array(np.zeros(3, dtype=np.complex64))


# -- rejections ----------------------------------------------------------------------------------

def _raw_update(**body_overrides) -> dict:
    """A valid update envelope as a plain dict, to be broken one field at a time."""
    logits = _logits(4, 3)
    body = {"tier": "t", "n": 10, "proxy": "p",
            "logits": {"dtype": "<f2", "shape": [4, 3], "data": logits.tobytes()}}
    body.update(body_overrides)
    return {"v": 1, "k": "update", "s": "c1", "q": 1, "b": 0, "t": 0.0, "body": body}


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _reason(payload: bytes, limits: Limits | None = None) -> str:
    with pytest.raises(MessageError) as info:
        decode(payload, limits or Limits())
    return info.value.reason


def test_the_valid_raw_update_decodes() -> None:
    # guards the helpers below: each rejection test breaks exactly one thing of this valid message
    out = decode(_pack(_raw_update()))
    assert isinstance(out, Update) and out.logits.shape == (4, 3)


def test_too_large() -> None:
    payload = _pack(_raw_update())
    assert _reason(payload, Limits(max_payload_bytes=len(payload) - 1)) == "too_large"
    assert isinstance(decode(payload, Limits(max_payload_bytes=len(payload))), Update)


def test_not_msgpack() -> None:
    assert _reason(b"\xc1\xc1\xc1") == "not_msgpack"  # 0xc1 is never used in msgpack
    assert _reason(_pack(_raw_update())[:-5]) == "not_msgpack"  # truncated


def test_not_a_map() -> None:
    assert _reason(_pack([1, 2, 3])) == "not_a_map"
    assert _reason(_pack("hello")) == "not_a_map"


def test_unknown_schema() -> None:
    raw = _raw_update()
    raw["v"] = 2
    assert _reason(_pack(raw)) == "unknown_schema"
    del raw["v"]
    assert _reason(_pack(raw)) == "unknown_schema"


def test_unknown_kind() -> None:
    raw = _raw_update()
    raw["k"] = "gradient"
    assert _reason(_pack(raw)) == "unknown_kind"


def test_missing_field() -> None:
    raw = _raw_update()
    del raw["body"]["proxy"]
    assert _reason(_pack(raw)) == "missing_field"
    raw = _raw_update()
    del raw["body"]
    assert _reason(_pack(raw)) == "missing_field"


@pytest.mark.parametrize("mutate", [
    lambda r: r.update(s=""),  # empty sender
    lambda r: r.update(s=5),  # sender not a string
    lambda r: r.update(q=-1),  # negative seq
    lambda r: r.update(q=True),  # bool is not an int here
    lambda r: r.update(b="3"),  # base version not an int
    lambda r: r.update(t=float("nan")),  # sent_at not finite
    lambda r: r["body"].update(tier=3),  # tier not a string
    lambda r: r["body"].update(n=-5),  # negative sample count
    lambda r: r["body"].update(logits=[1, 2, 3]),  # the logits field is not an array map
], ids=["empty_sender", "sender_type", "neg_seq", "bool_seq", "str_version", "nan_time", "tier_type",
        "neg_n", "logits_list"])
def test_bad_field(mutate) -> None:
    raw = _raw_update()
    mutate(raw)
    assert _reason(_pack(raw)) == "bad_field"


def test_bad_field_knowledge_temperature() -> None:
    msg = Knowledge(sender="s", seq=1, version=0, proxy_id="p", num_classes=3, temperature=3.0, logits=None)
    raw = msgpack.unpackb(encode(msg))
    raw["body"]["temperature"] = -1.0
    assert _reason(_pack(raw)) == "bad_field"


@pytest.mark.parametrize("logits", [
    {"dtype": "<f2", "shape": [4, 3]},  # no data
    {"dtype": "<f2", "shape": [4, 3], "data": b"\0" * 24, "extra": 1},  # extra key
    {"dtype": "<f2", "shape": "4x3", "data": b"\0" * 24},  # shape not a list
    {"dtype": "<f2", "shape": [4, -3], "data": b"\0" * 24},  # negative dim
    {"dtype": "<f2", "shape": [2, 2, 2, 2, 2], "data": b"\0" * 64},  # too many dims
    {"dtype": "<f2", "shape": [4, 3], "data": "text"},  # data not bytes
    {"dtype": "<f4", "shape": [4, 3], "data": b"\0" * 48},  # logits must be float16
    {"dtype": "<f2", "shape": [12], "data": b"\0" * 24},  # logits must be 2-D
], ids=["no_data", "extra_key", "shape_str", "neg_dim", "5d", "data_str", "f4", "1d"])
def test_bad_array(logits) -> None:
    assert _reason(_pack(_raw_update(logits=logits))) == "bad_array"


def test_bad_dtype() -> None:
    logits = {"dtype": "<c8", "shape": [4, 3], "data": b"\0" * 96}
    assert _reason(_pack(_raw_update(logits=logits))) == "bad_dtype"
    logits = {"dtype": "object", "shape": [4, 3], "data": b"\0" * 12}
    assert _reason(_pack(_raw_update(logits=logits))) == "bad_dtype"


def test_shape_mismatch_between_shape_and_bytes() -> None:
    logits = {"dtype": "<f2", "shape": [4, 3], "data": b"\0" * 23}
    assert _reason(_pack(_raw_update(logits=logits))) == "shape_mismatch"


def test_shape_mismatch_of_sample_ids_and_labels() -> None:
    ids = np.arange(5, dtype=np.uint32)  # 5 ids for 4 rows
    assert _reason(_pack(_raw_update(ids=pack_array(ids)))) == "shape_mismatch"
    ids64 = np.arange(4, dtype=np.int64)  # right count, wrong dtype
    assert _reason(_pack(_raw_update(ids=pack_array(ids64)))) == "shape_mismatch"
    labels = np.ones(4, dtype=np.uint32)  # 4 counts for 3 classes
    assert _reason(_pack(_raw_update(labels=pack_array(labels)))) == "shape_mismatch"


def test_label_counts_must_be_unsigned_integers() -> None:
    for labels in (np.array([0.5, 1.0, 2.0], dtype=np.float32), np.array([-3, 1, 2], dtype=np.int64)):
        assert _reason(_pack(_raw_update(labels=pack_array(labels)))) == "bad_dtype"


def test_too_many_samples() -> None:
    logits = np.zeros((11, 3), dtype=np.float16)
    payload = _pack(_raw_update(logits=pack_array(logits)))
    assert _reason(payload, Limits(max_samples=10)) == "too_many_samples"
    assert decode(payload, Limits(max_samples=11)).logits.shape == (11, 3)


def test_class_count() -> None:
    wide = np.zeros((2, 1001), dtype=np.float16)
    assert _reason(_pack(_raw_update(logits=pack_array(wide)))) == "class_count"
    empty = np.zeros((2, 0), dtype=np.float16)
    assert _reason(_pack(_raw_update(logits=pack_array(empty)))) == "class_count"
    # knowledge logits must have as many columns as the classes it announces
    msg = Knowledge(sender="s", seq=1, version=2, proxy_id="p", num_classes=4, temperature=3.0,
                    logits=np.zeros((5, 3), dtype=np.float16))
    assert _reason(encode(msg)) == "class_count"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(bad: float) -> None:
    logits = _logits(4, 3)
    logits[2, 1] = bad
    assert _reason(_pack(_raw_update(logits=pack_array(logits)))) == "non_finite"


def test_message_error_is_a_koala_error_with_detail() -> None:
    from koala_async.errors import KoalaError

    with pytest.raises(KoalaError) as info:
        decode(b"\x93\x01\x02\x03")
    assert isinstance(info.value, MessageError)
    assert str(info.value).startswith("not_a_map")
