"""A version is published only for arrivals: a client's status changes wake the server's learn loop,
but publish nothing. Before, each one published an empty version, and every client's next update
arrived that much staler (the quickstart's first 8 versions held no update)."""

from __future__ import annotations

import asyncio

import pytest
from probe import Probe

from koala_async.io.memory import MemoryBroker
from koala_async.nodes.pacing import FLUSH_AFTER
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(30)


async def test_status_changes_publish_no_version() -> None:
    broker = MemoryBroker()
    async with ServerNode(ServerConfig(large_model="image-small", status_interval=60),
                          transport=broker.factory) as server, Probe(broker) as probe:
        for state in ("idle", "training", "waiting: load 3.20/core", "waiting: load 3.35/core", "idle"):
            await probe.status("c0", True, state)
            await asyncio.sleep(0.2)
        await asyncio.sleep(FLUSH_AFTER + 0.5)  # past the partial buffer's wait
        assert server.version == 0 and set(probe.knowledge) == {0}
