"""Whole nodes on the in-memory transport: a server and clients learn, refuse a duplicate, see a last
will, with no broker, no sockets and no sleeping on a clock beyond the nodes' own short intervals.

The same nodes run over MQTT in tests/integration; here the transport is the shipped test double
(:mod:`koala_async.io.memory`), so each test takes a fraction of a second of wall time.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import numpy as np
import pytest
from waiting import wait_for

from koala_async.core.envelope import Status, Update, decode, encode
from koala_async.core.tiering import TierPolicy
from koala_async.core.topics import Topics
from koala_async.io.base import Incoming, LinkOptions
from koala_async.io.memory import MemoryBroker
from koala_async.nodes.client import ClientConfig, ClientNode, TrainSettings
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(60)
TOPICS = Topics("default")


def client_config(i: int, updates: int) -> ClientConfig:
    return ClientConfig(node_id=f"c{i}", shard=i, num_shards=3, max_updates=updates, interval=0.01,
                        tier="image-small", train=TrainSettings(epochs=3), keepalive=5,
                        tier_policy=TierPolicy(high_load=1000.0, defer_load=1000.0))


async def test_a_server_and_three_clients_learn_over_the_in_memory_transport() -> None:
    broker = MemoryBroker()
    started = time.perf_counter()
    async with AsyncExitStack() as stack:
        # 60, not 40: updates that queue behind a distillation are fused one version stale, and buy
        # distill_steps * w(1) = 0.71 of the steps (staleness damping, core/staleness.py)
        server = await stack.enter_async_context(ServerNode(ServerConfig(distill_steps=60),
                                                            transport=broker.factory))
        before = server.test_accuracy
        clients = [await stack.enter_async_context(ClientNode(client_config(i, 3), transport=broker.factory))
                   for i in range(3)]
        async with asyncio.timeout(30):
            await asyncio.gather(*(c.done() for c in clients))
        await wait_for(lambda: server.metrics.accepted == 9 and server.snapshot()["pending"] == 0, 30,
                       "every update fused")
        await wait_for(lambda: all(c.knowledge is not None and c.knowledge.version == server.version
                                   for c in clients), 10, "the latest knowledge at every client")
    elapsed = time.perf_counter() - started
    assert server.metrics.accepted_by_client == {"c0": 3, "c1": 3, "c2": 3}
    assert dict(server.rejects.counts) == {}
    assert server.version >= 1
    assert server.test_accuracy > before + 0.2, server.metrics.timeline  # it learned from the logits
    assert [c.updates_accepted for c in clients] == [3, 3, 3]  # every verdict came back
    assert broker.published[TOPICS.update("c0")] == 3
    print(f"\nin-memory federation: {elapsed:.2f} s, accuracy {before:.3f} -> {server.test_accuracy:.3f}")


async def test_a_redelivered_update_is_not_taken_twice_and_answered_as_accepted() -> None:
    """A copy of an accepted update (a QoS 1 redelivery, or the client republishing it because its
    verdict was late) is counted as a duplicate delivery, never fused again, and answered
    ``accepted=True, reason="duplicate"`` so the client can stop republishing it."""
    broker = MemoryBroker()
    async with ServerNode(ServerConfig(distill_steps=1), transport=broker.factory) as server:
        seen: list[Incoming] = []
        async with broker.factory(LinkOptions("probe", subscriptions=((TOPICS.ack("c9"), 1),),
                                              handler=seen.append)) as probe:
            await probe.wait_connected(5)
            learner = server.learner
            update = Update(sender="c9", seq=int(time.time() * 1000), base_version=0, tier="image-tiny",
                            n_samples=20, proxy_id=learner.proxy_id,
                            logits=np.zeros((len(learner.proxy_x), 10), np.float16))
            for _ in range(2):  # the same message twice, as a QoS 1 redelivery would
                await probe.publish(TOPICS.update("c9"), encode(update))
            await wait_for(lambda: len(seen) == 2, 5, "two verdicts")
    verdicts = [decode(m.payload) for m in seen]
    assert [(v.accepted, v.reason) for v in verdicts] == [(True, "accepted"), (True, "duplicate")]
    assert server.metrics.accepted == 1 and server.rejects.counts["duplicate"] == 1


async def test_a_client_whose_link_dies_is_seen_offline_through_its_last_will() -> None:
    broker = MemoryBroker()
    statuses: list[Status] = []

    def record(message: Incoming) -> None:
        status = decode(message.payload)
        assert isinstance(status, Status)
        statuses.append(status)

    async with ServerNode(ServerConfig(), transport=broker.factory) as server, \
            broker.factory(LinkOptions("probe", subscriptions=((TOPICS.client_status("c0"), 1),),
                                       handler=record)) as probe, \
            ClientNode(client_config(0, 1), transport=broker.factory) as client:
        await probe.wait_connected(5)
        def online() -> bool:
            presence = server.state.presence.get("c0")
            return presence is not None and presence.online

        await wait_for(online, 5, "the client online")
        broker.drop(client.transport.options.client_id)  # a network failure, not a goodbye
        await wait_for(lambda: any(s.state == "lost" for s in statuses), 5, "the last will")
        will = next(s for s in statuses if s.state == "lost")
        assert not will.online and will.sender == "c0"
        # the client reconnects by itself and says it is back; the server follows
        await wait_for(lambda: statuses[-1].online and online(), 5, "back online")
    assert "c0" not in server.state.presence  # it left: the server forgets its presence
    goodbye = decode(broker.retained[TOPICS.client_status("c0")].payload)
    assert isinstance(goodbye, Status) and goodbye.state == "left" and not goodbye.online  # a clean exit: no will
