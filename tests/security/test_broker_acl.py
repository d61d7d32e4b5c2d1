"""The shipped Mosquitto ACL holds against a real broker: clients publish only as themselves, only the
server user publishes knowledge, and a 2,000-update burst with hostile envelopes is fully accounted."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiomqtt
import msgpack
import numpy as np
import pytest

from koala_async.core.envelope import Ack, Knowledge, Update, decode, encode
from koala_async.core.topics import Topics
from koala_async.io.transport import BrokerAddress
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.mosquitto

FED = "sec"
TOPICS = Topics(FED)


def _client(url: str, user: str | None, password: str | None, ident: str) -> aiomqtt.Client:
    a = BrokerAddress.parse(url)
    return aiomqtt.Client(a.host, a.port, username=user, password=password, identifier=ident, timeout=10)


def _server_config(broker, tmp_path, **kw) -> ServerConfig:
    base = {"broker": broker.url, "federation": FED, "username": "server", "password": broker.passwords["server"],
                "distill_steps": 1, "buffer_size": 5000, "status_interval": 0.5, "state_dir": str(tmp_path / "state")}
    base.update(kw)
    return ServerConfig(**base)


def _update(server: ServerNode, sender: str, seq: int, **kw) -> Update:
    rng = np.random.default_rng(seq)
    fields = {"sender": sender, "seq": seq, "base_version": 0, "tier": "t", "n_samples": 50, "proxy_id": server.learner.proxy_id,
                  "logits": rng.normal(size=(len(server.learner.proxy_x), server.learner.spec.num_classes)).astype(np.float16)}
    fields.update(kw)
    return Update(**fields)


async def _retained_knowledge(url: str, user: str, password: str) -> Knowledge:
    async with _client(url, user, password, f"probe-{time.monotonic_ns()}") as probe:
        await probe.subscribe(TOPICS.knowledge, qos=1)
        async with asyncio.timeout(10):
            async for msg in probe.messages:
                message = decode(bytes(msg.payload))
                assert isinstance(message, Knowledge)
                return message
    raise AssertionError("no retained knowledge")


async def test_anonymous_and_wrong_password_are_refused(secure_broker) -> None:
    for user, password in ((None, None), ("client-1", "wrong"), ("nobody", "x")):
        with pytest.raises(aiomqtt.MqttError):
            async with _client(secure_broker.url, user, password, "intruder"):
                pass


async def test_client_cannot_publish_knowledge_or_as_another_client(secure_broker, tmp_path) -> None:
    async with ServerNode(_server_config(secure_broker, tmp_path)) as server:
        await server.transport.wait_connected(10)
        before = await _retained_knowledge(secure_broker.url, "client-1", "one")
        forged = Knowledge(sender="server", seq=1, version=999, proxy_id=server.learner.proxy_id,
                           num_classes=server.learner.spec.num_classes, temperature=1.0, logits=None)
        attempts = [(TOPICS.knowledge, encode(forged), True), (TOPICS.proxy, encode(forged), True),
                    (TOPICS.server_status, encode(forged), True),
                    # Impersonation: client-1 writes on client-2's update topic, as client-2.
                    (TOPICS.update("client-2"), encode(_update(server, "client-2", 1)), False)]
        for topic, payload, retain in attempts:
            # Mosquitto 2.0 drops a denied publish; for MQTT 3.1.1 it also closes the connection.
            try:
                async with _client(secure_broker.url, "client-1", "one", "koala-sec-client-1") as rogue:
                    await rogue.publish(topic, payload, qos=1, retain=retain, timeout=5)
            except aiomqtt.MqttError:
                pass
        # Control: the same client on its own topic gets through.
        async with _client(secure_broker.url, "client-1", "one", "koala-sec-client-1") as honest:
            await honest.publish(TOPICS.update("client-1"), encode(_update(server, "client-1", 1)), qos=1)
        async with asyncio.timeout(15):
            while server.metrics.accepted < 1:
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # give any leaked message time to arrive
        after = await _retained_knowledge(secure_broker.url, "client-2", "two")
        assert server.metrics.accepted_by_client == {"client-1": 1}
        assert server.rejects.total == 0  # the server never saw the impersonation
        assert after.sender == "server" and after.version == before.version != 999


def _hostile_payloads(server: ServerNode, sender: str, seq0: int) -> list[tuple[bytes, str]]:
    """Fifteen bad payloads for ``sender``, each with the reason the server must file it under."""
    good = encode(_update(server, sender, seq0))
    wrong_schema = msgpack.unpackb(good, raw=False)
    wrong_schema["v"] = 2
    wrong_kind = msgpack.unpackb(good, raw=False)
    wrong_kind["k"] = "gossip"
    nan_logits = _update(server, sender, seq0 + 1).logits.copy()
    nan_logits[0, 0] = np.nan
    c = server.learner.spec.num_classes
    return [
        (b"\x00garbage", "not_msgpack"), (b"\xc1", "not_msgpack"), (good[: len(good) // 2], "not_msgpack"),
        (encode(_update(server, sender, 1)), "duplicate"), (encode(_update(server, sender, 2)), "duplicate"),
        (encode(_update(server, sender, seq0 + 2, base_version=10**6)), "future_version"),
        (encode(_update(server, sender, seq0 + 3, base_version=10**6)), "future_version"),
        (encode(_update(server, sender, seq0 + 4, logits=nan_logits)), "non_finite"),
        (encode(_update(server, sender, seq0 + 5, logits=np.full((3, c), np.inf, np.float16))), "non_finite"),
        (msgpack.packb(wrong_schema, use_bin_type=True), "unknown_schema"),
        (msgpack.packb(wrong_schema, use_bin_type=True), "unknown_schema"),
        (encode(_update(server, sender, seq0 + 6, logits=np.zeros((len(server.learner.proxy_x), c + 1), np.float16))),
         "class_count"),
        (encode(_update(server, sender, seq0 + 7, logits=np.zeros((5, c), np.float16))), "shape_mismatch"),
        (encode(_update(server, "c99", seq0 + 8)), "sender_mismatch"),
        (msgpack.packb(wrong_kind, use_bin_type=True), "unknown_kind"),
    ]


async def test_burst_of_2000_updates_is_accounted_exactly(secure_broker, tmp_path) -> None:
    clients, valid_each = 20, 85
    async with ServerNode(_server_config(secure_broker, tmp_path)) as server:
        await server.transport.wait_connected(10)
        plan: dict[str, list[bytes]] = {}
        expected = Counter[str]()
        for i in range(clients):
            sender = f"c{i:02d}"
            payloads = [encode(_update(server, sender, seq)) for seq in range(1, valid_each + 1)]
            for payload, reason in _hostile_payloads(server, sender, 1000):
                payloads.append(payload)
                expected[reason] += 1
            plan[sender] = payloads
        sent = sum(len(p) for p in plan.values())
        assert sent == 2000

        async def publish_all(sender: str) -> None:
            async with _client(secure_broker.url, sender, secure_broker.passwords[sender],
                               f"koala-{FED}-{sender}") as client:
                for payload in plan[sender]:
                    await client.publish(TOPICS.update(sender), payload, qos=1)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for sender in plan:
                tasks.create_task(publish_all(sender))
        async with asyncio.timeout(90):
            while server.metrics.accepted + server.rejects.total < sent:
                await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - started
        await asyncio.sleep(0.5)  # nothing extra may trickle in
        snap = server.snapshot()
        print(f"\n2000-update burst accounted in {elapsed:.1f}s: accepted {snap['accepted']}, "
              f"rejected {snap['rejected']}")
        assert snap["accepted"] == clients * valid_each
        assert snap["accepted"] + sum(snap["rejected"].values()) == sent
        assert Counter(snap["rejected"]) == expected
        assert snap["accepted_by_client"] == {f"c{i:02d}": valid_each for i in range(clients)}


async def test_a_client_reads_the_verdicts_on_its_own_updates_and_no_one_elses(secure_broker, tmp_path) -> None:
    async with ServerNode(_server_config(secure_broker, tmp_path, buffer_size=1)) as server:
        await server.transport.wait_connected(10)
        async with _client(secure_broker.url, "client-1", "one", "koala-sec-client-1") as owner, \
                _client(secure_broker.url, "client-2", "two", "koala-sec-client-2") as snoop:
            await owner.subscribe(TOPICS.ack("client-1"), qos=1)
            try:  # Mosquitto 2.0 either refuses the subscription or never delivers on it
                await snoop.subscribe(TOPICS.ack("client-1"), qos=1)
            except aiomqtt.MqttError:
                pass
            await owner.publish(TOPICS.update("client-1"), encode(_update(server, "client-1", 7)), qos=1)
            await owner.publish(TOPICS.update("client-1"), encode(_update(server, "client-1", 7)), qos=1)
            verdicts = []
            async with asyncio.timeout(15):
                async for msg in owner.messages:
                    ack = decode(bytes(msg.payload))
                    assert isinstance(ack, Ack)
                    verdicts.append((ack.update_seq, ack.accepted, ack.reason))
                    if len(verdicts) == 2:
                        break
            # a copy of an accepted update is answered accepted-equivalent, so its client can clear it
            assert verdicts == [(7, True, "accepted"), (7, True, "duplicate")]
            leaked = []
            try:
                async with asyncio.timeout(1.0):
                    async for msg in snoop.messages:
                        leaked.append(msg.topic.value)
            except TimeoutError:
                pass
            assert leaked == []
        assert server.acks.sent == 2
