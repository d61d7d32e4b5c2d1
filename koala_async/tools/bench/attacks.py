"""The classes of hostile input :mod:`~koala_async.tools.bench.hostile` sends, and where each must be counted.

Every :class:`Attack` is a list of raw MQTT publications (topic, payload, retain) and what the
federation must do with them: ``where`` says who counts them (``server``: the server's status
``rejected`` counters; ``clients``: the sum over the real clients' status ``rejected`` counters;
``accepted``: the attacker's accepted updates, for valid but extreme input; ``flood``: the server's
``clients_accepted`` and ``clients_known`` counts), and ``expect`` maps each reason (or count) to how many.

The attacker is one device with a client id of its own (``mallory``): it can publish anything on any
topic of an open broker, but it holds neither the server's Ed25519 key nor anyone's HMAC key.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field, replace

import msgpack
import numpy as np

from koala_async.core.envelope import Ack, Knowledge, ProxyManifest, Status, Update, encode, pack_array
from koala_async.core.server_signing import MAGIC
from koala_async.core.topics import Topics

ATTACKER = "mallory"
DEPTH = 3000  # nesting levels of the deep payloads (the decoder allows 8; msgpack itself 1024)


@dataclass(frozen=True)
class Attack:
    name: str
    surface: str  # which topic it goes to, in words
    where: str  # server | clients | accepted | flood | observer
    expect: dict[str, int]
    messages: list[tuple[str, bytes, bool]] = field(repr=False)


@dataclass(frozen=True)
class Target:
    """What the attacker knows of the federation: topics, the public proxy set, the version, old knowledge."""

    topics: Topics
    proxy_id: str
    n_proxy: int
    num_classes: int
    version: int
    old_knowledge: bytes  # a genuine, sealed knowledge payload of an earlier version (a replay)
    clients: tuple[str, ...]


def deep(levels: int = DEPTH) -> bytes:
    """A msgpack value nested ``levels`` lists deep: ``[[[...nil...]]]``."""
    return b"\x91" * levels + b"\xc0"


def envelope_with(kind: str, sender: str, seq: int, body: bytes, base: int = 0) -> bytes:
    """An envelope whose ``body`` is the raw msgpack ``body`` (to splice in what packb would refuse)."""
    head = {"v": 1, "k": kind, "s": sender, "q": seq, "b": base, "t": time.time()}
    return (bytes([0x80 | (len(head) + 1)]) + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in head.items())
            + msgpack.packb("body") + body)


def _update(t: Target, seq: int, **changes: object) -> Update:
    logits = (np.random.default_rng(seq % 1000).standard_normal((t.n_proxy, t.num_classes)) * 3).astype(np.float16)
    base = Update(sender=ATTACKER, seq=seq, base_version=t.version, tier="image-small", n_samples=50,
                  proxy_id=t.proxy_id, logits=logits, sent_at=time.time())
    return replace(base, **changes)  # type: ignore[arg-type]


def server_attacks(t: Target, seq: int) -> list[Attack]:
    """Classes aimed at the server's ingest: the attacker's update and status topics."""
    up, st = t.topics.update(ATTACKER), t.topics.client_status(ATTACKER)
    n, c = t.n_proxy, t.num_classes
    f16 = np.zeros((n, c), np.float16)
    nan = f16.copy()
    nan[0, 0] = np.nan
    inf = f16.copy()
    inf[1, 1] = np.inf
    valid = encode(_update(t, seq + 90))

    # Every refused message gets a number of its own: the server answers a repeated (sender, seq) from
    # its verdict memory (core/verdicts.py), so a second class sent under one number would be counted
    # as that first verdict's repeat, not under its own reason.
    fresh = itertools.count(seq)

    def u(**changes: object) -> bytes:  # accepted ones name their seq, increasing
        return encode(_update(t, int(changes.pop("seq", next(fresh))), **changes))  # type: ignore[call-overload]

    def body(**fields: object) -> bytes:  # an update body with raw fields (what encode would never make)
        return msgpack.packb({"tier": "image-small", "n": 50, "proxy": t.proxy_id, **fields}, use_bin_type=True)

    status = Status(sender=t.clients[0], seq=seq, role="client", online=True, state="idle")
    return [
        Attack("not msgpack", "update", "server", {"not_msgpack": 2},
               [(up, b"\xc1\xc1 not msgpack", False), (up, b"\xc1" + os.urandom(64), False)]),
        Attack("deep nesting", "update", "server", {"too_deep": 2},
               [(up, deep(), False), (up, envelope_with("update", ATTACKER, next(fresh), deep()), False)]),
        Attack("huge map", "update", "server", {"too_large": 1},
               [(up, envelope_with("update", ATTACKER, next(fresh), msgpack.packb({f"k{i}": i for i in range(100_000)})),
                 False)]),
        Attack("huge string", "update", "server", {"too_large": 1}, [(up, u(tier="x" * 100_000), False)]),
        Attack("wrong kind", "update", "server", {"wrong_kind": 2},
               [(up, encode(Knowledge(ATTACKER, seq, 0, t.proxy_id, c, 3.0, None)), False),
                (up, encode(Ack(ATTACKER, seq, ATTACKER, 1, True, "accepted", 0)), False)]),
        Attack("bad dtype", "update", "server", {"bad_dtype": 1, "bad_array": 1},
               [(up, envelope_with("update", ATTACKER, next(fresh), body(logits={"dtype": "<c16", "shape": [n, c],
                                                                          "data": b"\0" * (16 * n * c)})), False),
                (up, envelope_with("update", ATTACKER, next(fresh), body(logits=pack_array(f16.astype(np.float32)))), False)]),
        Attack("bad shape", "update", "server", {"bad_array": 1, "shape_mismatch": 2, "class_count": 1},
               [(up, envelope_with("update", ATTACKER, next(fresh), body(logits=pack_array(f16[None]))), False),
                (up, envelope_with("update", ATTACKER, next(fresh), body(logits=pack_array(f16),
                                                                 ids=pack_array(np.arange(3, dtype=np.uint32)))), False),
                (up, envelope_with("update", ATTACKER, next(fresh), body(logits={"dtype": "<f2", "shape": [n, c],
                                                                          "data": b"\0" * 10})), False),
                (up, u(logits=np.zeros((n, c + 1), np.float16)), False)]),
        Attack("NaN / inf", "update", "server", {"non_finite": 2}, [(up, u(logits=nan), False), (up, u(logits=inf), False)]),
        Attack("empty update", "update", "server", {"empty_update": 2},
               [(up, u(logits=np.zeros((0, c), np.float16)), False), (up, u(n_samples=0), False)]),
        Attack("huge seq", "update", "server", {"seq_out_of_range": 1, "bad_field": 1},
               [(up, u(seq=2**53), False), (up, envelope_with("update", ATTACKER, 2**60, body()), False)]),
        Attack("out-of-range ids", "update", "server", {"bad_sample_ids": 2},
               [(up, u(logits=f16[:4], sample_ids=np.array([0, 1, 2, n], np.uint32)), False),
                (up, u(logits=f16[:4], sample_ids=np.array([5, 5, 6, 7], np.uint32)), False)]),
        Attack("impersonation", "update", "server", {"sender_mismatch": 1}, [(up, u(sender=t.clients[0]), False)]),
        Attack("wrong proxy / version", "update", "server", {"wrong_proxy": 1, "future_version": 1},
               [(up, u(proxy_id="not-the-proxy"), False), (up, u(base_version=10**6), False)]),
        Attack("replayed update", "update", "server", {"duplicate": 3}, [(up, valid, False)] * 4),
        Attack("oversize payload", "update", "server", {"too_large": 1}, [(up, b"\x92" + b"\0" * (9 << 20), False)]),
        Attack("2 MiB status info", "status", "server", {"too_large": 2},
               [(st, envelope_with("status", ATTACKER, next(fresh), msgpack.packb(
                   {"role": "client", "online": True, "info": {"blob": "x" * (2 << 20)}})), False),
                (st, envelope_with("status", ATTACKER, next(fresh), msgpack.packb(
                    {"role": "client", "online": True, "info": {f"k{i}": "x" * 200 for i in range(10_000)}})), False)]),
        Attack("deep status", "status", "server", {"too_deep": 1},
               [(st, envelope_with("status", ATTACKER, next(fresh), b"\x83" + msgpack.packb("role") + msgpack.packb("client")
                                   + msgpack.packb("online") + msgpack.packb(True) + msgpack.packb("info")
                                   + b"\x81\xa1a" + deep(40)), False)]),
        Attack("status for another id", "status", "server", {"sender_mismatch": 1},
               [(st, encode(status), False)]),
        Attack("extreme logits, huge n_samples", "update", "accepted", {"accepted": 2},
               [(up, u(seq=seq + 1000, logits=np.full((n, c), 65504, np.float16)
                       * np.where(np.arange(c) % 2, 1, -1).astype(np.float16)), False),
                (up, u(seq=seq + 1001, n_samples=2**40), False)]),
    ]


def client_attacks(t: Target, seq: int) -> list[Attack]:
    """Classes aimed at every client: the server's topics, and each client's ack topic."""
    k, p = len(t.clients), t.topics
    forged = encode(Knowledge("server", seq, 10**6, t.proxy_id, t.num_classes, 3.0,
                              np.zeros((t.n_proxy, t.num_classes), np.float16)))
    proxy = encode(ProxyManifest("server", seq, "f0" * 8, "<f4", (t.n_proxy, 64), t.num_classes, 1 << 22,
                                 (bytes(32),)))
    return [
        Attack("forged knowledge (unsigned)", "knowledge", "clients", {"unsigned": k},
               [(p.knowledge, forged, False)]),
        Attack("forged knowledge (bad signature)", "knowledge", "clients", {"bad_signature": k},
               [(p.knowledge, MAGIC + os.urandom(64) + forged, False)]),
        Attack("replayed old knowledge", "knowledge", "clients", {"version_regressed": k},
               [(p.knowledge, t.old_knowledge, False)]),
        Attack("garbage on knowledge", "knowledge", "clients", {"not_msgpack": k, "too_deep": k, "wrong_kind": k},
               [(p.knowledge, b"\xc1 garbage", False), (p.knowledge, deep(), False),
                (p.knowledge, encode(Status("server", seq, "server", True)), False)]),
        Attack("forged proxy", "proxy", "clients", {"unsigned": k, "bad_signature": k},
               [(p.proxy, proxy, False), (p.proxy, MAGIC + os.urandom(64) + proxy, False)]),
        Attack("forged acks", "ack", "clients", {"wrong_sender": k, "unknown_ack": k, "not_msgpack": k},
               [m for cid in t.clients for m in (
                   (p.ack(cid), encode(Ack(ATTACKER, seq, cid, 1, False, "stale", 0)), False),
                   (p.ack(cid), encode(Ack("server", seq, cid, 12345, False, "stale", 0)), False),
                   (p.ack(cid), b"\xc1", False))]),
    ]


def flood_attack(t: Target, ids: int, seq: int) -> Attack:
    """``ids`` made-up clients, each with a retained status and one valid update."""
    logits = (np.random.default_rng(3).standard_normal((t.n_proxy, t.num_classes)) * 3).astype(np.float16)
    messages = []
    for i in range(ids):
        sender = f"ghost-{i:05d}"
        messages.append((t.topics.client_status(sender), encode(Status(sender, seq, "client", True, "idle",
                                                                       {"tier": "image-small"})), True))
        messages.append((t.topics.update(sender), encode(Update(sender, seq + 1, t.version, "image-small", 50,
                                                                 t.proxy_id, logits)), False))
    return Attack(f"{ids:,}-id flood", "status + update", "flood", {"clients_accepted": ids, "clients_known": ids},
                  messages)


def forged_server_status(t: Target, seq: int) -> Attack:
    """A retained 'the server is gone' in the server's name: nodes ignore it; the next heartbeat replaces it."""
    lost = encode(Status("server", seq, "server", False, "lost", {}))
    return Attack("forged server status", "server status", "observer", {"replaced": 1},
                  [(t.topics.server_status, lost, True)])
