"""An async server publishes a new version only when it learned something: clients changing their
status (a client waiting on its load reports a new state every few seconds) wake the learn loop, but
an empty batch is no version. Each empty version cost a large model a full knowledge and test pass."""

from __future__ import annotations

import asyncio

import pytest

from koala_async.core.topics import Topics
from koala_async.io.base import LinkOptions
from koala_async.io.memory import MemoryBroker
from koala_async.nodes.common import status_payload
from koala_async.nodes.pacing import FLUSH_AFTER
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(60)
TOPICS = Topics("default")


async def test_status_changes_without_updates_make_no_new_version() -> None:
    broker = MemoryBroker()
    async with ServerNode(ServerConfig(distill_steps=1), transport=broker.factory) as server, \
            broker.factory(LinkOptions("c0-link")) as client:
        await client.wait_connected(5)
        for i in range(3):  # a new state each time: "waiting: load 3.8/core", "... 3.6/core", ...
            await client.publish(TOPICS.client_status("c0"),
                                 status_payload("c0", i + 1, "client", True, f"waiting: load 3.{8 - i}/core", {}),
                                 retain=True)
            await asyncio.sleep(FLUSH_AFTER / 2)
        await asyncio.sleep(FLUSH_AFTER + 0.5)
        assert server.state.presence["c0"].state == "waiting: load 3.6/core"  # the server did see them
        assert server.version == 0, server.metrics.timeline
