"""Asynchronous dynamics on the in-memory transport: clients keep training while the server distils
(so updates carry staleness), a version needs an arrival, the first KOALA version waits for a share
of the clients, and FedBuff learns from buffered weights without rounds."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import numpy as np
import pytest
from waiting import wait_for

from koala_async.core.envelope import Update, encode
from koala_async.core.topics import Topics
from koala_async.core.warmup import Warmup
from koala_async.io.base import LinkOptions
from koala_async.io.memory import MemoryBroker
from koala_async.nodes.client import ClientConfig, ClientNode, TrainSettings
from koala_async.nodes.common import status_payload
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(90)
TOPICS = Topics("default")


def client(i: int, **over: object) -> ClientConfig:
    base: dict[str, object] = {"node_id": f"c{i}", "shard": i, "num_shards": 3, "interval": 0.01,
                               "tier": "image-small", "train": TrainSettings(epochs=1), "keepalive": 5,
                               "host_load": False}
    return ClientConfig(**{**base, **over})  # type: ignore[arg-type]


async def test_clients_keep_training_while_the_server_distils() -> None:
    """Before: a client waited for new knowledge after each training (lockstep with the server's
    versions, every update staleness 0). Now it trains on what it holds while the server distils."""
    broker = MemoryBroker()
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(ServerNode(
            ServerConfig(distill_steps=20, warmup=Warmup(share=0.0)), transport=broker.factory))
        clients = [await stack.enter_async_context(ClientNode(client(i), transport=broker.factory))
                   for i in range(3)]
        await wait_for(lambda: server.version >= 2, 60, "two versions")
        sent = sum(c.updates_sent for c in clients)
        versions = server.version
    # lockstep allowed at most one training per client per version (plus the first)
    assert sent > len(clients) * (versions + 1), (sent, versions)
    # updates built on v0 while v1 was distilled were fused at v1: the staleness rule weighed them
    assert server.metrics.fused_staleness_max >= 1, server.metrics.fused_staleness_hist
    assert all(c.state != "waiting: no new knowledge or data" for c in clients)


async def test_a_presence_change_publishes_no_version() -> None:
    """Before: a client's status change woke the learn loop, which published a version with nothing
    fused: the untrained model's logits went out as knowledge."""
    broker = MemoryBroker()
    async with ServerNode(ServerConfig(), transport=broker.factory) as server, \
            broker.factory(LinkOptions("probe")) as probe:
        await probe.wait_connected(5)
        for i, state in enumerate(("idle", "training", "publishing", "idle")):
            await probe.publish(TOPICS.client_status("c7"), status_payload("c7", 1 + i, "client", True, state, {}),
                                retain=True)
        await wait_for(lambda: "c7" in server.state.presence and server.state.presence["c7"].state == "idle"
                       and len(server.state.presence) == 1, 5, "the statuses")
        await asyncio.sleep(3.0)  # longer than the partial buffer's flush (2 s)
        assert server.version == 0
        assert server.learner.knowledge_logits is None


async def test_the_first_version_waits_for_a_share_of_the_available_clients() -> None:
    broker = MemoryBroker()
    config = ServerConfig(distill_steps=2, warmup=Warmup(share=1.0, timeout=60.0))
    async with ServerNode(config, transport=broker.factory) as server, \
            broker.factory(LinkOptions("probe")) as probe:
        await probe.wait_connected(5)
        for cid in ("c1", "c2"):
            await probe.publish(TOPICS.client_status(cid), status_payload(cid, 1, "client", True, "idle", {}))
        await wait_for(lambda: len(server.state.available()) == 2, 5, "two clients online")
        learner = server.learner

        def update(cid: str) -> bytes:
            logits = np.random.default_rng(0).normal(size=(len(learner.proxy_x), 10)).astype(np.float16)
            return encode(Update(sender=cid, seq=int(time.time() * 1000), base_version=0, tier="image-tiny",
                                 n_samples=20, proxy_id=learner.proxy_id, logits=logits))

        await probe.publish(TOPICS.update("c1"), update("c1"))
        await wait_for(lambda: server.metrics.accepted == 1, 5, "the first update")
        await asyncio.sleep(2.5)
        assert server.version == 0  # one of two clients: not yet all the federation will know
        await probe.publish(TOPICS.update("c2"), update("c2"))
        await wait_for(lambda: server.version == 1, 10, "the first version")
        assert server.metrics.timeline[-1][1] == 1


async def test_fedbuff_learns_from_buffered_weights_without_rounds() -> None:
    broker = MemoryBroker()
    server_config = ServerConfig(mode="fedbuff", buffer_size=2)  # type: ignore[arg-type]
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(ServerNode(server_config, transport=broker.factory))
        before = server.test_accuracy
        clients = [await stack.enter_async_context(ClientNode(
            client(i, mode="fedbuff", max_updates=4, train=TrainSettings(epochs=2)), transport=broker.factory))
            for i in range(3)]
        async with asyncio.timeout(60):
            await asyncio.gather(*(c.done() for c in clients))
        await wait_for(lambda: server.metrics.accepted == 12 and server.snapshot()["pending"] == 0, 30,
                       "every update applied")
    assert dict(server.rejects.counts) == {}
    assert server.version >= 4  # a version per buffer of 2, not per round of 3
    assert server.test_accuracy > before + 0.3, server.metrics.timeline
    assert server.snapshot()["deltas_unapplied"] == 0
    assert "round" not in server.snapshot()
