"""decode classifies every hostile payload as a message or a MessageError: deep nesting, crafted
containers and sizes, empty updates. Each case here escaped or was accepted before the bounds."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from koala_async.core.envelope import Knowledge, Limits, ProxySet, Status, Update, decode, encode
from koala_async.core.info import TRUNCATED_KEY, InfoLimits, check_info, fit_info
from koala_async.errors import MessageError


def _update(**changes: object) -> dict:
    raw = msgpack.unpackb(encode(Update(sender="c1", seq=1, base_version=0, tier="t", n_samples=5,
                                        proxy_id="p", logits=np.zeros((3, 4), np.float16),
                                        sample_ids=np.arange(3, dtype=np.uint32))), raw=False)
    raw["body"].update(changes)
    return raw


def _status(**changes: object) -> dict:
    raw = msgpack.unpackb(encode(Status(sender="c1", seq=1, role="client", online=True)), raw=False)
    raw["body"].update(changes)
    return raw


def _nested(depth: int, leaf: object = 0, as_map: bool = False) -> object:
    value = leaf
    for _ in range(depth):
        value = {"x": value} if as_map else [value]
    return value


DEFAULT = Limits()


def _reason(raw: object, limits: Limits = DEFAULT) -> str:
    with pytest.raises(MessageError) as err:
        decode(msgpack.packb(raw, use_bin_type=True), limits)
    return err.value.reason


@pytest.mark.parametrize("where", ["state", "info", "v", "k", "q", "role"])
@pytest.mark.parametrize("as_map", [False, True])
def test_a_thousand_levels_deep_is_too_deep_wherever_it_is(where: str, as_map: bool) -> None:
    # Finding 1: str(state) of a 1,000-deep list raised RecursionError out of decode.
    deep = _nested(1000, as_map=as_map)
    raw = _status(**{where: deep}) if where in ("state", "info", "role") else {**_status(), where: deep}
    assert _reason(raw) == "too_deep"


def test_deeper_than_msgpack_itself_nests_is_too_deep() -> None:
    # msgpack's packer cannot build this; splice 5,000 one-element arrays in as raw bytes
    payload = msgpack.packb(_status(state="HOLE")).replace(msgpack.packb("HOLE"), b"\x91" * 5000 + b"\x00")
    with pytest.raises(MessageError) as err:
        decode(payload)
    assert err.value.reason == "too_deep"


def test_depth_limit_is_exact() -> None:
    limits = Limits(max_depth=6)
    # envelope (1) > body (2) > info (3): info may hold 3 more levels here, not 4
    decode(msgpack.packb(_status(info={"a": _nested(2, as_map=True)})), limits)
    assert _reason(_status(info={"a": _nested(4, as_map=True)}), limits) == "too_deep"


def test_many_small_objects_are_too_large() -> None:
    assert _reason(_status(info={"a": [None] * 60_000})) == "too_large"
    assert _reason(_status(info={f"k{i}": [0] * 100 for i in range(200)})) == "too_large"


def test_a_zero_row_array_with_a_huge_dimension_is_refused() -> None:
    # numpy's reshape raised ValueError ("Maximum allowed dimension exceeded") out of decode.
    logits = {"dtype": "<f2", "shape": [0, 2**63], "data": b""}
    assert _reason(_update(logits=logits, ids=None)) == "too_large"
    logits = {"dtype": "<f2", "shape": [0, 2**31, 2**31, 2**31], "data": b""}
    assert _reason(_update(logits=logits, ids=None)) == "too_large"


@pytest.mark.parametrize("changes", [
    {"logits": {"dtype": "<f2", "shape": [0, 4], "data": b""}, "ids": None},
    {"logits": {"dtype": "<f2", "shape": [0, 4], "data": b""},
     "ids": {"dtype": "<u4", "shape": [0], "data": b""}},
    {"n": 0},
])
def test_empty_updates_are_refused(changes: dict) -> None:
    # Finding 2: an update with no rows was accepted and wiped the sender's contribution.
    assert _reason(_update(**changes)) == "empty_update"


def test_status_info_is_bounded() -> None:
    big = {"blob": "x" * 200, **{f"k{i}": "y" * 200 for i in range(200)}}  # 40 KB: over 16 KiB
    assert _reason(_status(info=big)) == "too_large"
    assert _reason(_status(info={"a": b"bytes"})) == "bad_info"
    assert _reason(_status(info=[1, 2])) == "bad_info"
    assert _reason(_status(info={"a": "x" * 300})) == "too_large"
    assert _reason(_status(info={"a": list(range(300))})) == "too_large"


def test_status_state_must_be_text() -> None:
    assert _reason(_status(state=[1, 2])) == "bad_field"


def test_ext_types_are_refused() -> None:
    raw = _status()
    raw["t"] = msgpack.Timestamp(1, 0)
    with pytest.raises(MessageError) as err:
        decode(msgpack.packb(raw, datetime=False))
    assert err.value.reason == "not_msgpack"


def test_errors_never_echo_untrusted_containers() -> None:
    raw = {**_status(), "v": [["x" * 1000] * 50]}
    with pytest.raises(MessageError) as err:
        decode(msgpack.packb(raw))
    assert len(str(err.value)) < 100


def test_encode_fits_a_status_info_its_peers_would_refuse() -> None:
    # Finding 5: a 10k-client server status was a map that decode refuses.
    info = {"accepted_by_client": {f"client-{i:05d}": i for i in range(10_000)}, "version": 3,
            "nested": _nested(10, as_map=True), "arr": np.float32(0.5), "pair": (1, 2)}
    message = decode(encode(Status(sender="server", seq=1, role="server", online=True, info=info)))
    assert isinstance(message, Status)
    assert message.info["version"] == 3 and message.info["arr"] == 0.5 and message.info["pair"] == [1, 2]
    assert message.info[TRUNCATED_KEY] > 9_000
    assert len(message.info["accepted_by_client"]) <= InfoLimits().max_entries


def test_fit_info_keeps_a_small_info_as_it_is() -> None:
    info = {"tier": "cnn-s", "resources": {"cpu": 2, "mem": 1.5, "names": ["a", "b"]}, "acc": float("nan")}
    fitted = fit_info(info)
    assert fitted.keys() == info.keys() and fitted["resources"] == info["resources"]
    assert check_info(fitted) is fitted


@pytest.mark.parametrize("info", [
    {f"k{i}": "v" * 250 for i in range(255)},
    {"a": [[[[[1]]]]]},
    {"a": [{"b": list(range(300))} for _ in range(50)]},
])
def test_fit_info_output_always_passes_check_info(info: dict) -> None:
    assert check_info(fit_info(info))[TRUNCATED_KEY] > 0


def test_epoch_round_trips_and_defaults_to_zero() -> None:
    knowledge = Knowledge(sender="server", seq=1, version=4, proxy_id="p", num_classes=2, temperature=3.0,
                          logits=None, epoch=1_700_000_000_000)
    assert decode(encode(knowledge)) == knowledge
    proxy = ProxySet(sender="server", seq=2, proxy_id="p", inputs=np.zeros((2, 3), np.float32), num_classes=2,
                     epoch=5)
    assert decode(encode(proxy)).epoch == 5  # type: ignore[union-attr]
    old = msgpack.unpackb(encode(knowledge), raw=False)
    del old["e"]
    assert decode(msgpack.packb(old)).epoch == 0  # type: ignore[union-attr]
    assert _reason({**old, "e": -1}) == "bad_field"
