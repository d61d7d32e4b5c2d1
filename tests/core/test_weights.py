"""FedAvg on the wire and in the core: the weights message, its layout check, admission, averaging."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import Knowledge, Limits, Weights, decode, encode, pack_array
from koala_async.core.weights import admit_weights, check_weights, weighted_average
from koala_async.errors import MessageError

LAYOUT = {"conv.weight": (4, 1, 3, 3), "conv.bias": (4,), "fc.weight": (10, 16), "fc.bias": (10,)}


def params(seed: int = 0, layout: dict = LAYOUT) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in layout.items()}


def weights(**kw) -> Weights:
    base = {"sender": "c1", "seq": 9, "base_version": 2, "model": "image-large", "n_samples": 120,
            "params": params(), "sent_at": 5.5}
    base.update(kw)
    return Weights(**base)


def raw(msg: Weights) -> dict:
    return msgpack.unpackb(encode(msg), raw=False)


def pack(obj: dict) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# -- envelope --------------------------------------------------------------------------------------

def test_weights_round_trip_keeps_names_shapes_and_values() -> None:
    msg = weights()
    out = decode(encode(msg))
    assert isinstance(out, Weights)
    assert (out.sender, out.seq, out.base_version, out.model, out.n_samples, out.sent_at) == \
        ("c1", 9, 2, "image-large", 120, 5.5)
    assert list(out.params) == list(LAYOUT)
    for name, value in msg.params.items():
        assert out.params[name].dtype == np.float32
        np.testing.assert_array_equal(out.params[name], value)


def test_float64_weights_travel_as_float32() -> None:
    out = decode(encode(weights(params={"w": np.ones((2, 2), dtype=np.float64)})))
    assert out.params["w"].dtype == np.float32


def _mutated(mutate) -> bytes:
    obj = raw(weights())
    mutate(obj)
    return pack(obj)


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda o: o["body"].pop("params"), "missing_field"),
    (lambda o: o["body"].update(params={}), "bad_weights"),
    (lambda o: o["body"].update(params=[1, 2]), "bad_field"),
    (lambda o: o["body"]["params"].update({"x" * 200: pack_array(np.zeros(2, np.float32))}), "bad_weights"),
    (lambda o: o["body"]["params"].update(extra=pack_array(np.zeros(2, np.float16))), "bad_dtype"),
    (lambda o: o["body"]["params"].update(extra=pack_array(np.array([1.0, np.nan], np.float32))),
     "non_finite"),
    (lambda o: o["body"]["params"].update(extra=pack_array(np.array([np.inf], np.float32))), "non_finite"),
    (lambda o: o["body"]["params"].update(extra={"dtype": "<f4", "shape": [3], "data": b"\0" * 8}),
     "shape_mismatch"),
    (lambda o: o["body"].update(model=""), "bad_field"),
    (lambda o: o["body"].update(model=7), "bad_field"),
    (lambda o: o["body"].update(n=-1), "bad_field"),
], ids=["no params", "empty params", "params not a map", "long name", "float16", "nan", "inf",
        "bytes vs shape", "empty model", "model not a string", "negative n"])
def test_malformed_weights_are_rejected_by_reason(mutate, reason: str) -> None:
    with pytest.raises(MessageError) as info:
        decode(_mutated(mutate))
    assert info.value.reason == reason


def test_weights_limits_bound_tensor_count_and_payload_size() -> None:
    many = {f"p{i}": np.zeros(1, np.float32) for i in range(5)}
    with pytest.raises(MessageError) as info:
        decode(encode(weights(params=many)), Limits(max_tensors=4))
    assert info.value.reason == "bad_weights"
    payload = encode(weights())
    with pytest.raises(MessageError) as info:
        decode(payload, Limits(max_payload_bytes=len(payload) - 1))
    assert info.value.reason == "too_large"


def test_knowledge_carries_its_mode_and_stays_backward_compatible() -> None:
    k = Knowledge(sender="server", seq=1, version=4, proxy_id="p", num_classes=3, temperature=3.0,
                  logits=None, mode="sync")
    assert decode(encode(k)).mode == "sync"
    obj = msgpack.unpackb(encode(k), raw=False)
    obj["body"].pop("mode")  # what an older server sends
    assert decode(pack(obj)).mode == "async"
    assert "mode" not in msgpack.unpackb(encode(Knowledge(**{**k.__dict__, "mode": "async"})), raw=False)["body"]
    obj["body"]["mode"] = "rounds-please"
    with pytest.raises(MessageError) as info:
        decode(pack(obj))
    assert info.value.reason == "bad_field"


# -- layout, admission, averaging --------------------------------------------------------------------

@pytest.mark.parametrize(("change", "reason"), [
    (lambda p: p.pop("fc.bias"), "missing_parameter"),
    (lambda p: p.update(extra=np.zeros(1, np.float32)), "unknown_parameter"),
    (lambda p: p.update({"fc.weight": np.zeros((16, 10), np.float32)}), "shape_mismatch"),
])
def test_check_weights_names_the_mismatch(change, reason: str) -> None:
    p = params()
    assert check_weights(p, LAYOUT) is None
    change(p)
    assert check_weights(p, LAYOUT) == reason


@pytest.mark.parametrize(("kw", "topic", "reason"), [
    ({}, "c1", "accepted"),
    ({}, "c2", "sender_mismatch"),
    ({"seq": 1}, "c1", "duplicate"),
    ({"model": "image-small"}, "c1", "wrong_model"),
    ({"n_samples": 0}, "c1", "no_samples"),
    ({"params": params(layout={**LAYOUT, "fc.bias": (9,)})}, "c1", "shape_mismatch"),
    ({"base_version": 3}, "c1", "future_version"),
    ({"base_version": 1}, "c1", "stale"),
])
def test_admit_weights(kw: dict, topic: str, reason: str) -> None:
    seen = SeqWindow()
    seen.add("c1", 1)
    decision = admit_weights(weights(**kw), topic, 2, "image-large", LAYOUT, seen)
    assert decision.reason == reason
    assert decision.accepted is (reason == "accepted")


def test_weighted_average_weights_by_samples() -> None:
    a = {"w": np.array([0.0, 10.0], np.float32)}
    b = {"w": np.array([4.0, 2.0], np.float32)}
    out = weighted_average([(a, 1.0), (b, 3.0)])
    np.testing.assert_allclose(out["w"], [3.0, 4.0])
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(weighted_average([(a, 5.0)])["w"], a["w"])


def test_weighted_average_refuses_nothing_and_non_positive_weights() -> None:
    with pytest.raises(ValueError):
        weighted_average([])
    with pytest.raises(ValueError):
        weighted_average([({"w": np.zeros(1, np.float32)}, 0.0)])


def test_the_weights_of_a_real_large_model_pass_the_default_limits() -> None:
    """MobileNetV2 has 314 state tensors (BatchNorm statistics included), ResNet-50 320: FedAvg of
    them must get through the decoder that bounds every message."""
    layout = {f"features.{i}.weight": np.zeros(2, np.float32) for i in range(320)}
    assert len(decode(encode(weights(params=layout))).params) == 320


def test_a_zero_dim_tensor_comes_off_the_wire_as_one_value_and_is_conformed_back() -> None:
    from koala_async.core.weights import check_weights, conform

    layout = {"bn.num_batches_tracked": (), "w": (2, 3)}
    sent = weights(params={"bn.num_batches_tracked": np.float32(7.0).reshape(()), "w": np.ones((2, 3), np.float32)})
    got = decode(encode(sent)).params
    assert got["bn.num_batches_tracked"].shape == (1,)  # the wire carries 1 to 4 dimensions
    assert check_weights(got, layout) is None
    assert {k: v.shape for k, v in conform(got, layout).items()} == layout
    assert check_weights({"bn.num_batches_tracked": np.zeros(2, np.float32), "w": got["w"]}, layout) == "shape_mismatch"
