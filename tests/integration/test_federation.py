"""End to end over a real MQTT broker: a server and clients in one event loop.

Every wait is bounded by ``asyncio.timeout`` so a broken build fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import aiomqtt
import msgpack
import numpy as np
import pytest
from waiting import wait_for

from koala_async.core.envelope import Update, encode
from koala_async.core.topics import Topics
from koala_async.io.broker import EmbeddedBroker, free_port
from koala_async.nodes.client import ClientConfig, ClientNode
from koala_async.nodes.server import ServerConfig, ServerNode

TOPICS = Topics("default")

pytestmark = pytest.mark.timeout(150)  # every wait is bounded; this only catches a wedged event loop


async def settle(server: ServerNode, accepted: int, timeout: float = 60.0) -> None:
    """Wait until the server has accepted ``accepted`` updates, has none pending, and its version has
    not moved for a while: at least 1 s and three times its mean distillation so far, so a
    distillation still running on a loaded machine is waited for."""
    await wait_for(lambda: server.metrics.accepted >= accepted, timeout, f"{accepted} accepted updates")
    try:
        async with asyncio.timeout(timeout):
            while True:
                version = server.version
                quiet = max(1.0, 3 * server.metrics.distill_seconds / max(version, 1))
                await asyncio.sleep(quiet)
                if server.snapshot()["pending"] == 0 and server.version == version and version >= 1:
                    return
    except TimeoutError:
        pytest.fail("the server did not settle")


def raw_update(server: ServerNode, sender: str, seq: int, **kw) -> bytes:
    rng = np.random.default_rng(seq)
    logits = rng.normal(size=(len(server.learner.proxy_x), server.learner.spec.num_classes)).astype(np.float16)
    fields = {"sender": sender, "seq": seq, "base_version": server.version, "tier": "image-small",
              "n_samples": 100, "proxy_id": server.learner.proxy_id, "logits": logits}
    fields.update(kw)
    return encode(Update(**fields))


def mqtt_target(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("mqtt://").split(":")
    return host, int(port)


async def publish_raw(url: str, topic: str, *payloads: bytes) -> None:
    host, port = mqtt_target(url)
    async with asyncio.timeout(10):
        async with aiomqtt.Client(host, port, identifier=f"raw-{time.monotonic_ns()}") as client:
            for payload in payloads:
                await client.publish(topic, payload, qos=1)


# -- the whole loop --------------------------------------------------------------------------------

async def test_federation_improves_the_large_model(broker_url: str) -> None:
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(ServerNode(ServerConfig(broker=broker_url)))
        clients = [await stack.enter_async_context(ClientNode(ClientConfig(
            node_id=f"c{i}", shard=i, num_shards=3, max_updates=3, interval=0.2, broker=broker_url)))
            for i in range(3)]
        try:
            async with asyncio.timeout(90):
                await asyncio.gather(*(client.done() for client in clients))
        except TimeoutError:
            pytest.fail(f"clients did not finish: {[c.updates_sent for c in clients]} updates sent, "
                        f"server {server.snapshot()}")
        await settle(server, accepted=9)

        start_accuracy = server.metrics.timeline[0][2]
        assert server.metrics.timeline[0][1] == 0
        assert start_accuracy < 0.3  # an untrained 10-class model
        assert server.test_accuracy > start_accuracy + 0.4, server.metrics.timeline
        assert server.test_accuracy > 0.6
        assert server.metrics.accepted == 9
        assert server.metrics.accepted_by_client == {"c0": 3, "c1": 3, "c2": 3}
        assert dict(server.rejects.counts) == {}
        assert 1 <= server.version <= 9
        assert [c.updates_sent for c in clients] == [3, 3, 3]
        # knowledge flows back: every client ends up holding the server's latest version, with logits
        await wait_for(lambda: all(c.knowledge is not None and c.knowledge.version == server.version
                                   for c in clients), 10, "the latest knowledge at every client")
        for c in clients:
            assert c.knowledge.logits is not None, (c.config.node_id, c.knowledge.version, server.version)
            assert c.knowledge.logits.shape == (len(server.learner.proxy_x), 10)
        assert [dict(c.rejects.counts) for c in clients] == [{}, {}, {}], [c.transport.stats for c in clients]
        # the server heard the clients' status messages
        await wait_for(lambda: set(server.state.presence) == {"c0", "c1", "c2"}, 10, "client status")


# -- hostile and broken input -----------------------------------------------------------------------

@pytest.fixture
async def server(embedded_broker: EmbeddedBroker):
    async with ServerNode(ServerConfig(broker=embedded_broker.url, distill_steps=2)) as node:
        await node.transport.wait_connected(timeout=10)
        yield node


async def test_malformed_payloads_are_counted_and_the_server_keeps_accepting(
        server: ServerNode, embedded_broker: EmbeddedBroker) -> None:
    topic = TOPICS.update("evil")
    await publish_raw(embedded_broker.url, topic, b"\xc1 not msgpack", msgpack.packb([1, 2, 3]), b"")
    await wait_for(lambda: server.rejects.total == 3, 10, "three rejects")
    assert server.rejects.counts["not_msgpack"] == 2  # garbage and the empty payload
    assert server.rejects.counts["not_a_map"] == 1
    assert server.metrics.accepted == 0

    # the server is alive and still takes a well-formed update from the same client
    await publish_raw(embedded_broker.url, topic, raw_update(server, "evil", seq=1))
    await wait_for(lambda: server.metrics.accepted == 1, 10, "the good update")
    await wait_for(lambda: server.version == 1, 15, "a new knowledge version")
    assert server.rejects.total == 3


async def test_update_on_another_clients_topic_is_sender_mismatch(
        server: ServerNode, embedded_broker: EmbeddedBroker) -> None:
    forged = raw_update(server, "c1", seq=5)
    await publish_raw(embedded_broker.url, TOPICS.update("c2"), forged)
    await wait_for(lambda: server.rejects.counts["sender_mismatch"] == 1, 10, "sender_mismatch")
    assert server.metrics.accepted == 0
    # the same update on its own topic is fine
    await publish_raw(embedded_broker.url, TOPICS.update("c1"), forged)
    await wait_for(lambda: server.metrics.accepted == 1, 10, "the honest update")


async def test_redelivered_and_wrong_updates_are_rejected_by_reason(
        server: ServerNode, embedded_broker: EmbeddedBroker) -> None:
    url, topic = embedded_broker.url, TOPICS.update("c3")
    good = raw_update(server, "c3", seq=10)
    await publish_raw(url, topic, good, good)  # a QoS 1 redelivery
    await publish_raw(url, topic, raw_update(server, "c3", seq=11, proxy_id="someone-elses"))
    await publish_raw(url, topic, raw_update(server, "c3", seq=12, base_version=999))
    await wait_for(lambda: server.rejects.total == 3, 10, "three rejects")
    assert dict(server.rejects.counts) == {"duplicate": 1, "wrong_proxy": 1, "future_version": 1}
    assert server.metrics.accepted == 1


# -- broker not there yet -----------------------------------------------------------------------------

async def test_client_retries_until_a_broker_appears() -> None:
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    async with ClientNode(ClientConfig(node_id="early", shard=0, num_shards=3, max_updates=1,
                                       interval=0.1, broker=url)) as client:
        transport = client.transport
        await wait_for(lambda: transport.stats.last_error != "", 10, "a failed connection attempt")
        first_error = transport.stats.last_error
        await asyncio.sleep(1.0)  # it keeps trying in the background and nothing crashes
        assert not transport.connected.is_set()
        assert transport.stats.connects == 0
        assert all(not t.done() for t in client._tasks)
        assert first_error

        async with EmbeddedBroker(port=port), ServerNode(ServerConfig(broker=url, distill_steps=2)) as server:
            try:
                async with asyncio.timeout(30):
                    await client.done()
            except TimeoutError:
                pytest.fail(f"client never published after the broker came up: {transport.stats}")
            assert transport.stats.connects >= 1
            await wait_for(lambda: server.metrics.accepted == 1, 10, "the late client's update")
