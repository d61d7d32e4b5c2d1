"""A client whose shard was derived from another split than the server's refuses to train, says why
in its status, and sends nothing; one derived like the server trains. On the in-memory transport."""

from __future__ import annotations

import pytest
from probe import TOPICS, Probe
from waiting import wait_for

from koala_async.core.envelope import Status, decode
from koala_async.core.tiering import TierPolicy
from koala_async.io.memory import MemoryBroker
from koala_async.nodes.client import ClientConfig, ClientNode, TrainSettings
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(60)
RELAXED = TierPolicy(high_load=1e3, defer_load=1e3)


def client(node_id: str, **split: float) -> ClientConfig:
    return ClientConfig(node_id=node_id, shard=0, num_shards=8, max_updates=1, interval=0.01, tier="image-tiny",
                        train=TrainSettings(epochs=1), tier_policy=RELAXED, **split)  # type: ignore[arg-type]


async def test_a_client_on_another_split_refuses_to_train_and_says_so() -> None:
    broker = MemoryBroker()
    async with ServerNode(ServerConfig(seed=3, distill_steps=1, large_model="image-small"),
                          transport=broker.factory) as server, \
            Probe(broker, TOPICS.client_status("wrong")) as probe, \
            ClientNode(client("wrong", seed=0, test_fraction=0.1), transport=broker.factory) as wrong, \
            ClientNode(client("right", seed=3), transport=broker.factory) as right:
        await wait_for(lambda: right.updates_sent == 1, 30, "the client on the server's split trains")
        await wait_for(lambda: wrong.state.startswith("refusing to train"), 10, "the refusal")
        statuses = [decode(m.payload) for m in probe.seen if m.topic == TOPICS.client_status("wrong")]
    said = [s.state for s in statuses if isinstance(s, Status)]
    assert any(s.startswith("refusing to train") for s in said), said  # in its published status
    assert "seed 0 (server: 3)" in wrong.state and "test_fraction 0.1 (server: 0.2)" in wrong.state
    assert "test and validation samples" in wrong.state
    assert wrong.updates_sent == 0 and server.metrics.accepted_by_client == {"right": 1}
