"""Signed server messages: a client with the server's key pinned takes knowledge and proxy sets only
from the server, never older than what it has, and counts why it refuses the rest (finding 3)."""

from __future__ import annotations

import base64
import stat

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from koala_async.core.envelope import Ack, Knowledge, ProxySet, Status, Weights, encode
from koala_async.core.knowledge_gate import KnowledgeGate
from koala_async.core.server_signing import (
    Ed25519PublicKey,
    ServerSigner,
    generate_key,
    is_sealed,
    key_id,
    load_private_key,
    next_epoch,
    open_sealed,
    parse_public_key,
    public_key_text,
    write_keypair,
)
from koala_async.core.signing import sign as hmac_sign
from koala_async.errors import ConfigError, MessageError

KEY = generate_key()
SIGNER = ServerSigner(KEY, context="fed-a")
EPOCH = 1_700_000_000_000


def _knowledge(version: int, epoch: int = EPOCH, sender: str = "server") -> bytes:
    return encode(Knowledge(sender=sender, seq=version, version=version, proxy_id="p", num_classes=2,
                            temperature=3.0, logits=np.zeros((4, 2), np.float16), epoch=epoch))


def _proxy(epoch: int = EPOCH, proxy_id: str = "p") -> bytes:
    return encode(ProxySet(sender="server", seq=1, proxy_id=proxy_id, inputs=np.zeros((4, 3), np.float32),
                           num_classes=2, epoch=epoch))


def _gate(*keys: Ed25519PublicKey) -> KnowledgeGate:
    return KnowledgeGate("server", keys or (KEY.public_key(),), context="fed-a")


def test_signed_knowledge_is_accepted_with_its_message() -> None:
    payload = SIGNER.seal(_knowledge(3))
    assert is_sealed(payload) and len(payload) == len(_knowledge(3)) + 68
    verdict = _gate().check(payload, "knowledge")
    assert verdict.accepted and isinstance(verdict.message, Knowledge) and verdict.message.version == 3


@pytest.mark.parametrize("make, reason", [
    # the attack of finding 3: a forged retained knowledge, version 10**6, from a non-server publisher
    (lambda: _knowledge(10**6), "unsigned"),
    (lambda: _knowledge(10**6, sender="c7"), "unsigned"),
    (lambda: _proxy(proxy_id="forged"), "unsigned"),
    (lambda: ServerSigner(generate_key(), "fed-a").seal(_knowledge(10**6)), "bad_signature"),  # wrong key
    (lambda: ServerSigner(KEY, "fed-b").seal(_knowledge(4)), "bad_signature"),  # another federation's
    (lambda: SIGNER.seal(_knowledge(4))[:-1] + b"\x01", "bad_signature"),  # altered
    (lambda: SIGNER.seal(_knowledge(4))[:40], "bad_signature"),  # truncated signature
    (lambda: hmac_sign(_knowledge(4), b"client-key"), "not_msgpack"),  # a client's HMAC form
    (lambda: SIGNER.seal(_knowledge(4, sender="c1")), "wrong_sender"),
    (lambda: SIGNER.seal(b"\xc1"), "not_msgpack"),
])
def test_forgeries_are_refused_by_reason(make, reason) -> None:
    verdict = _gate().check(make())
    assert (verdict.accepted, verdict.reason, verdict.message) == (False, reason, None)


def test_the_wrong_kind_on_a_topic_is_refused() -> None:
    assert _gate().check(SIGNER.seal(_proxy()), "knowledge").reason == "wrong_kind"


def test_versions_never_go_back_within_an_epoch_and_replays_are_refused() -> None:
    gate = _gate()
    old = SIGNER.seal(_knowledge(3))
    assert gate.check(old).accepted and gate.check(SIGNER.seal(_knowledge(5))).accepted
    assert gate.check(SIGNER.seal(_knowledge(5))).accepted  # the retained message, redelivered
    verdict = gate.check(old)  # a replay of an older signed message
    assert (verdict.accepted, verdict.reason) == (False, "version_regressed")


def test_a_server_restarted_without_state_is_newer_by_its_epoch() -> None:
    gate = _gate()
    assert gate.check(SIGNER.seal(_knowledge(40))).accepted
    restarted = next_epoch(None, EPOCH + 60_000)
    assert gate.check(SIGNER.seal(_knowledge(0, epoch=restarted))).accepted
    assert gate.check(SIGNER.seal(_knowledge(41))).reason == "version_regressed"  # the old run's
    assert gate.check(SIGNER.seal(_proxy(epoch=EPOCH))).reason == "version_regressed"
    assert gate.check(SIGNER.seal(_proxy(epoch=restarted))).accepted
    assert gate.to_state() == {"epoch": restarted, "highs": {"knowledge": [restarted, 0]}}
    fresh = _gate()
    fresh.restore(gate.to_state())
    assert fresh.check(SIGNER.seal(_knowledge(40))).reason == "version_regressed"


def test_next_epoch_moves_forward_even_when_the_clock_went_back() -> None:
    assert next_epoch(None, 5) == 5 and next_epoch(100, 5) == 101 and next_epoch(100, 500) == 500


def test_global_model_weights_are_ordered_like_knowledge() -> None:
    def weights(round_: int) -> bytes:
        return encode(Weights(sender="server", seq=round_, base_version=round_, model="m", n_samples=1,
                              params={"w": np.zeros(2, np.float32)}, epoch=EPOCH))
    gate = _gate()
    assert gate.check(SIGNER.seal(weights(2)), "weights").accepted
    assert gate.check(SIGNER.seal(weights(1)), "weights").reason == "version_regressed"
    assert gate.check(weights(3), "weights").reason == "unsigned"


def test_status_and_acks_need_no_signature_but_a_bad_one_is_refused() -> None:
    status = encode(Status(sender="server", seq=1, role="server", online=True))
    ack = encode(Ack(sender="server", seq=2, client="c1", update_seq=9, accepted=True, reason="accepted",
                     version=3))
    gate = _gate()
    assert gate.check(status).accepted and gate.check(ack).accepted and gate.check(SIGNER.seal(ack)).accepted
    assert gate.check(ServerSigner(generate_key(), "fed-a").seal(status)).reason == "bad_signature"


def test_without_a_pinned_key_only_the_sender_is_checked() -> None:
    gate = KnowledgeGate(server_id="server")
    assert gate.check(_knowledge(10**6, sender="c7")).reason == "wrong_sender"
    assert gate.check(_knowledge(7)).accepted
    assert gate.check(_knowledge(2)).accepted  # as before: newest by arrival, a version is forgeable
    assert gate.check(ServerSigner(generate_key()).seal(_knowledge(3))).accepted  # unwrapped unchecked


def test_a_rotated_key_can_be_pinned_beside_the_old_one() -> None:
    new = generate_key()
    gate = _gate(KEY.public_key(), new.public_key())
    assert gate.check(ServerSigner(new, "fed-a").seal(_knowledge(1))).accepted
    assert gate.check(SIGNER.seal(_knowledge(2))).accepted


def test_open_sealed_raises_message_errors() -> None:
    with pytest.raises(MessageError) as err:
        open_sealed(_knowledge(1), (KEY.public_key(),))
    assert err.value.reason == "unsigned"
    assert open_sealed(SIGNER.seal(b"x"), (KEY.public_key(),), "fed-a") == b"x"


def test_gate_never_raises_on_junk() -> None:
    rng = np.random.default_rng(0)
    gate = _gate()
    sealed = SIGNER.seal(_knowledge(1))
    for i in range(500):
        junk = rng.integers(0, 256, size=int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        for payload in (junk, b"KE1\x00" + junk, sealed[:i % len(sealed)] + junk):
            assert not gate.check(payload).accepted


# -- key files -----------------------------------------------------------------------------------

def test_keypair_files_round_trip(tmp_path) -> None:
    path = tmp_path / "server.key"
    text = write_keypair(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_private_key(path)
    assert public_key_text(key) == text == (tmp_path / "server.key.pub").read_text().strip()
    raw = bytes.fromhex(text)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for form in (text, base64.b64encode(raw).decode(), "ed25519:" + base64.b64encode(raw).decode().rstrip("="),
                 pem.decode(), str(tmp_path / "server.key.pub")):
        assert public_key_text(parse_public_key(form)) == text
    assert len(key_id(key)) == 16
    with pytest.raises(ConfigError, match="overwrite"):
        write_keypair(path)
    seed = tmp_path / "seed.hex"
    seed.write_text(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                      serialization.NoEncryption()).hex())
    assert public_key_text(load_private_key(seed)) == text


@pytest.mark.parametrize("value", ["", "abc", "zz" * 32, "/no/such/key.pub"])
def test_bad_public_keys_name_their_source(value: str) -> None:
    with pytest.raises(ConfigError, match=r"client.toml \[client.server_public_key\]|client.toml"):
        parse_public_key(value, source="client.toml [client.server_public_key]")


def test_bad_private_key_files_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_private_key(tmp_path / "missing.key")
    bad = tmp_path / "bad.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match=str(bad)):
        load_private_key(bad)
