"""End-to-end delivery between real nodes on the in-memory transport: an update the broker took and
then dropped (as Mosquitto does past ``max_queued_messages``) is republished or superseded, and the
server and the clients count every update the same way.

The same property over a real Mosquitto with its default queue limits: tests/integration/test_delivery_mosquitto.py.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest
from waiting import wait_for

from koala_async.core.tiering import TierPolicy
from koala_async.core.topics import Topics
from koala_async.io.memory import MemoryBroker
from koala_async.nodes.client import ClientConfig, ClientNode, TrainSettings
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(60)
TOPICS = Topics("default")


def client_config(i: int, updates: int, interval: float) -> ClientConfig:
    return ClientConfig(node_id=f"c{i}", shard=i, num_shards=2, max_updates=updates, interval=interval,
                        tier="image-tiny", train=TrainSettings(epochs=1), keepalive=5, ack_timeout=0.4,
                        tier_policy=TierPolicy(high_load=1000.0, defer_load=1000.0))


async def test_updates_the_broker_dropped_are_republished_or_superseded_and_counted_alike() -> None:
    broker = MemoryBroker()
    # c0's only update is dropped: it must be published again. c1's first two are dropped, and each
    # newer update supersedes the one before: the server learns of them from the newer one.
    broker.lose_next(TOPICS.update("c0"), 1)
    broker.lose_next(TOPICS.update("c1"), 2)
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(ServerNode(ServerConfig(distill_steps=2),
                                                            transport=broker.factory))
        c0 = await stack.enter_async_context(ClientNode(client_config(0, 1, 0.01), transport=broker.factory))
        c1 = await stack.enter_async_context(ClientNode(client_config(1, 4, 0.01), transport=broker.factory))
        async with asyncio.timeout(30):
            await asyncio.gather(c0.done(), c1.done())
        await wait_for(lambda: c0.outbox.pending + c1.outbox.pending == 0
                       and c1.outbox.ledger.unconfirmed == 0, 20, "a verdict on every update")
    assert sum(broker.lost.values()) == 3
    by_client = server.metrics.accepted_by_client
    # c0: taken on its second publication
    assert c0.outbox.ledger.republished >= 1 and by_client.get("c0") == 1 and c0.updates_accepted == 1
    # c1: four updates; each lost one was republished or superseded by the next (whichever came first:
    # training time decides), and the server counted the superseded ones from the newer update
    ledger = c1.outbox.ledger
    assert (ledger.sent, ledger.accepted + ledger.superseded, dict(ledger.rejected)) == (4, 4, {})
    assert ledger.superseded == server.metrics.superseded and ledger.superseded + ledger.republished >= 2
    assert by_client.get("c1") == ledger.accepted
    assert c0.outbox.ledger.balanced() and ledger.balanced()
    assert set(server.rejects.counts) <= {"duplicate"}
