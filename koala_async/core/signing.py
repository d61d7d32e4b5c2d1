"""Optional signed envelopes: HMAC-SHA256 over the whole encoded payload, with a key per client.

A signed payload is ``MAGIC + mac + envelope`` where ``mac = HMAC-SHA256(key, envelope)``. ``MAGIC``
starts with ``K`` (0x4b), a msgpack positive fixint, so it can never be mistaken for an envelope
(which is always a msgpack map). The signature covers every byte of the envelope, sender and sequence
number included, so a forged or altered update fails even on an open broker.

Pure functions: no I/O, no clock. Rejections raise :class:`~koala_async.errors.MessageError` with
reason ``unsigned`` (signatures are required and none is there), ``bad_signature`` (wrong key, altered
payload, truncated signature) or ``unknown_signer`` (no key for the sender on the topic).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from pathlib import Path

from koala_async.errors import ConfigError, MessageError

MAGIC = b"KS1\x00"
MAC_BYTES = 32


def sign(payload: bytes, key: bytes) -> bytes:
    """Prefix ``payload`` with its HMAC-SHA256 under ``key``."""
    if not key:
        raise ValueError("an empty signing key signs nothing")
    return MAGIC + hmac.new(key, payload, hashlib.sha256).digest() + payload


def is_signed(payload: bytes) -> bool:
    return payload[:len(MAGIC)] == MAGIC


def unwrap(payload: bytes) -> tuple[bytes, bytes | None]:
    """Split a payload into ``(envelope, mac)``; ``mac`` is None for an unsigned payload."""
    if not is_signed(payload):
        return payload, None
    head = len(MAGIC) + MAC_BYTES
    if len(payload) < head:
        raise MessageError("bad_signature", "signature truncated")
    return payload[head:], payload[len(MAGIC):head]


def verify(payload: bytes, signer: str | None, keys: Mapping[str, bytes] | None) -> bytes:
    """Return the envelope inside ``payload`` once its signature checks out.

    ``keys`` None means signatures are optional: a signed payload is unwrapped unchecked (the server
    has no key to check it with) and an unsigned one passes. With ``keys`` (even empty), every payload
    must be signed by the key of ``signer`` (the client id named by the topic).
    """
    envelope, mac = unwrap(payload)
    if keys is None:
        return envelope
    if mac is None:
        raise MessageError("unsigned", f"from {signer}")
    key = keys.get(signer) if signer is not None else None
    if key is None:
        raise MessageError("unknown_signer", f"no key for {signer!r}")
    if not hmac.compare_digest(mac, hmac.new(key, envelope, hashlib.sha256).digest()):
        raise MessageError("bad_signature", f"from {signer}")
    return envelope


def load_keys(path: str | Path) -> dict[str, bytes]:
    """Read a keys file: a JSON object ``{"client-id": "secret", ...}`` (secrets as UTF-8 text)."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read keys file: {exc}", source=str(path)) from None
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) and v
                                            for k, v in raw.items()):
        raise ConfigError("expected a JSON object mapping client id to a non-empty key string",
                          source=str(path))
    return {k: v.encode() for k, v in raw.items()}
