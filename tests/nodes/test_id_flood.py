"""Made-up client ids in their thousands, against a real ServerNode on the in-memory transport: the
server's state and status stay bounded, nothing per client runs at heartbeat time, and statuses alone
never make it publish a version."""

from __future__ import annotations

import asyncio
import statistics
import time

import numpy as np
import pytest
from waiting import wait_for

from koala_async.core.envelope import Limits, Status, Update, decode, encode
from koala_async.core.server_state import ServerState
from koala_async.core.topics import Topics
from koala_async.io.base import LinkOptions
from koala_async.io.memory import MemoryBroker
from koala_async.nodes.pacing import FLUSH_AFTER
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(90)
TOPICS = Topics("default")


def _status(sender: str, online: bool = True) -> bytes:
    return encode(Status(sender=sender, seq=int(time.time() * 1000), role="client", online=online, state="idle",
                         info={"tier": f"tier-{sender}"}))


def _decoded_status(server: ServerNode) -> dict:
    """The server's status as its own decoder reads it, with the default limits."""
    message = decode(server._status(True, "serving"), Limits())
    assert isinstance(message, Status)
    return message.info


async def test_statuses_from_thousands_of_ids_publish_no_version_and_keep_the_status_small() -> None:
    broker = MemoryBroker()
    ids = [f"ghost-{i:05d}" for i in range(3000)]
    async with ServerNode(ServerConfig(status_interval=0.2), transport=broker.factory) as server, \
            broker.factory(LinkOptions("flood")) as flood:
        await flood.wait_connected(5)
        for sender in ids:
            await flood.publish(TOPICS.client_status(sender), _status(sender), retain=True)
        await wait_for(lambda: server.state.online_count == len(ids), 20, "every ghost seen online")
        for sender in ids[:1000]:  # a third goes offline again: presence changes once more
            await flood.publish(TOPICS.client_status(sender), _status(sender, online=False), retain=True)
        await wait_for(lambda: server.state.online_count == 2000, 20, "a thousand ghosts offline")
        await asyncio.sleep(FLUSH_AFTER + 1)  # what a wake-up without arrivals would wait before fusing
        version = server.version
        info = _decoded_status(server)
        size = len(server._status(True, "serving"))
    assert version == 0, "statuses alone made the server publish versions"
    assert "_truncated" not in info, "the status had to be cut to decode"
    assert info["clients_online_count"] == 2000 and info.get("clients_known") == 3000
    assert info["clients_online"] == []  # a list that long is not published
    assert size < 8 * 1024, size


async def test_updates_from_many_ids_keep_the_fusion_and_status_bounded() -> None:
    broker = MemoryBroker()
    ids = [f"sybil-{i:04d}" for i in range(300)]
    config = ServerConfig(distill_steps=1, max_contributions=50, status_interval=0.2)
    async with ServerNode(config, transport=broker.factory) as server, \
            broker.factory(LinkOptions("flood")) as flood:
        await flood.wait_connected(5)
        learner = server.learner
        logits = np.random.default_rng(0).normal(size=(len(learner.proxy_x), 10)).astype(np.float16)
        seq = int(time.time() * 1000)
        for sender in ids:
            update = Update(sender=sender, seq=seq, base_version=0, tier=f"tier-{sender}", n_samples=10,
                            proxy_id=learner.proxy_id, logits=logits)
            await flood.publish(TOPICS.update(sender), encode(update))
        await wait_for(lambda: server.metrics.accepted == len(ids) and server.snapshot()["pending"] == 0, 60,
                       "every update fused")
        info = _decoded_status(server)
        contributions = len(learner.fusion.contributions)
    assert contributions == 50
    assert info["contributions"] == 50 and info["contributions_dropped"] == 250
    assert list(learner.fusion.contributions)[-1] == ids[-1]  # the most recent are kept
    assert "_truncated" not in info
    assert info["accepted_by_client"] == {} and info["clients_accepted"] == 300  # complete or not listed
    assert len(info["tier_trust"]) == 32 <= info["tiers_seen"]  # tier names come from the network


def _snapshot_seconds(state: ServerState) -> float:
    samples = []
    for _ in range(15):
        started = time.perf_counter()
        state.snapshot(time.monotonic())
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def test_a_heartbeat_snapshot_costs_the_same_with_twenty_thousand_known_clients() -> None:
    def state_with(n: int) -> ServerState:
        state = ServerState(lambda *_: None)
        for i in range(n):
            sender = f"c{i:05d}"
            state.on_status(Status(sender=sender, seq=1, role="client", online=i < 10, state="idle"), sender, 0.0)
        return state

    few, many = _snapshot_seconds(state_with(10)), _snapshot_seconds(state_with(20_000))
    assert many < 3 * few + 0.0005, f"snapshot {few * 1e6:.0f} us with 10 clients, {many * 1e6:.0f} us with 20,000"
