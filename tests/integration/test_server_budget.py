"""The server's benchmark knobs over a real broker: ``ingest_only`` admits without learning, and
``max_distill_seconds`` cuts a long distillation short so the next version comes out anyway."""

from __future__ import annotations

import pytest

from koala_async.io.broker import EmbeddedBroker
from koala_async.nodes.server import ServerConfig, ServerNode
from tests.integration.test_federation import TOPICS, publish_raw, raw_update, wait_for

pytestmark = pytest.mark.timeout(150)


async def test_ingest_only_admits_and_counts_but_never_learns(embedded_broker: EmbeddedBroker) -> None:
    async with ServerNode(ServerConfig(broker=embedded_broker.url, ingest_only=True)) as server:
        await server.transport.wait_connected(timeout=10)
        for i in range(5):
            await publish_raw(embedded_broker.url, TOPICS.update(f"c{i}"), raw_update(server, f"c{i}", seq=1))
        await publish_raw(embedded_broker.url, TOPICS.update("c0"), raw_update(server, "c0", seq=1))
        await wait_for(lambda: server.metrics.accepted == 5 and server.rejects.total == 1, 20, "5 accepted")
        await wait_for(lambda: server.snapshot()["pending"] == 0, 10, "the queue drained")
        assert server.rejects.counts["duplicate"] == 1
        assert server.version == 0
        assert server.snapshot()["fuse_latency"]["count"] == 0


async def test_latency_budget_cuts_a_long_distillation_short(embedded_broker: EmbeddedBroker) -> None:
    # 5000 steps of the large model would take minutes; the budget publishes after about 0.2 s.
    config = ServerConfig(broker=embedded_broker.url, distill_steps=5000, max_distill_seconds=0.2)
    async with ServerNode(config) as server:
        await server.transport.wait_connected(timeout=10)
        await publish_raw(embedded_broker.url, TOPICS.update("c1"), raw_update(server, "c1", seq=1))
        await wait_for(lambda: server.version == 1, 60, "version 1 despite 5000 steps asked")
        # The version number moves before the knowledge is published; the latency is recorded
        # once the publish returns.
        await wait_for(lambda: server.snapshot()["fuse_latency"]["count"] >= 1, 10, "latency recorded")
        snap = server.snapshot()
        assert 0 < snap["distill_steps_skipped"] < 5000
        assert snap["fuse_latency"]["count"] == 1
        assert snap["fuse_latency_recent"]["count"] == 1
        assert snap["fuse_latency_recent"]["max"] == snap["fuse_latency"]["max"]
