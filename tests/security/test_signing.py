"""Signed envelopes: forged, altered or unsigned updates are refused by reason when keys are set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from koala_async.core.envelope import Update, decode, encode
from koala_async.core.signing import is_signed, load_keys, sign, verify
from koala_async.errors import ConfigError, MessageError

KEYS = {"c1": b"secret-1", "c2": b"secret-2"}


def _payload(sender: str = "c1") -> bytes:
    return encode(Update(sender=sender, seq=1, base_version=0, tier="t", n_samples=3, proxy_id="p",
                         logits=np.zeros((2, 3), dtype=np.float16)))


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def test_signed_update_verifies_and_decodes() -> None:
    signed = sign(_payload(), KEYS["c1"])
    assert is_signed(signed) and not is_signed(_payload())
    assert decode(verify(signed, "c1", KEYS)).sender == "c1"


@pytest.mark.parametrize("make, reason", [
    (lambda: _payload(), "unsigned"),
    (lambda: sign(_payload(), b"guessed"), "bad_signature"),
    (lambda: sign(_payload("c2"), KEYS["c2"]), "bad_signature"),  # c2's key, sent on c1's topic
    (lambda: _flip_last(sign(_payload(), KEYS["c1"])), "bad_signature"),  # altered payload
    (lambda: sign(_payload(), KEYS["c1"])[:20], "bad_signature"),  # truncated signature
])
def test_forgeries_are_refused_by_reason(make, reason) -> None:
    with pytest.raises(MessageError) as err:
        verify(make(), "c1", KEYS)
    assert err.value.reason == reason


def test_unknown_signer_and_optional_mode() -> None:
    with pytest.raises(MessageError) as err:
        verify(sign(_payload("c9"), b"x"), "c9", KEYS)
    assert err.value.reason == "unknown_signer"
    # Without keys, signatures are optional: signed payloads are unwrapped, plain ones pass.
    assert verify(sign(_payload(), b"x"), "c1", None) == _payload()
    assert verify(_payload(), "c1", None) == _payload()


def test_keys_file(tmp_path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"c1": "secret-1"}))
    assert load_keys(path) == {"c1": b"secret-1"}
    path.write_text(json.dumps({"c1": 5}))
    with pytest.raises(ConfigError):
        load_keys(path)
