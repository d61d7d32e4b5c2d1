"""A client's status changing is no reason for a new knowledge version: at scale every client reports
several states per training, and each needless version goes out to every client."""

from __future__ import annotations

import asyncio

import pytest

from koala_async.core.topics import Topics
from koala_async.io.base import LinkOptions
from koala_async.io.memory import MemoryBroker
from koala_async.nodes.common import status_payload
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(30)
TOPICS = Topics("default")


async def test_status_changes_alone_publish_no_new_version() -> None:
    broker = MemoryBroker()
    async with ServerNode(ServerConfig(distill_steps=1), transport=broker.factory) as server, \
            broker.factory(LinkOptions("probe")) as probe:
        await probe.wait_connected(5)
        for i, state in enumerate(("idle", "training", "publishing", "idle", "training")):
            await probe.publish(TOPICS.client_status("c0"), status_payload("c0", i + 1, "client", True, state, {}),
                                retain=True)
            await asyncio.sleep(0.3)
        await asyncio.sleep(2.5)  # past the pacing's 2 s flush of a partial buffer
        assert server.state.presence["c0"].state == "training"
        assert server.version == 0 and broker.published[TOPICS.knowledge] == 1  # the initial one only
