"""A federation on sensor vectors whose features sit on very different scales learns because every
node standardizes them with the proxy set's statistics, the same on server and clients. The CSV is
synthetic, written by the test (tests/vector_data.py); before standardization the large model stayed
near chance (4 classes)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest
from probe import distill_learner
from vector_data import write_sensor_csv
from waiting import wait_for

from koala_async.core.tiering import TierPolicy
from koala_async.io.memory import MemoryBroker
from koala_async.nodes.client import ClientConfig, ClientNode, TrainSettings
from koala_async.nodes.local_training import DistillTask
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(90)


async def test_server_and_clients_standardize_alike_and_the_federation_learns(tmp_path: Path) -> None:
    dataset = f"csv:{write_sensor_csv(tmp_path / 'sensors.csv')}"
    broker = MemoryBroker()
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(ServerNode(
            ServerConfig(dataset=dataset, large_model="vector-medium", distill_steps=60, lr=3e-3,
                         status_interval=60), transport=broker.factory))
        before = server.test_accuracy
        clients = [await stack.enter_async_context(ClientNode(ClientConfig(
            node_id=f"c{i}", dataset=dataset, shard=i, num_shards=2, alpha=5.0, max_updates=2, interval=0.01,
            tier="vector-small", train=TrainSettings(epochs=5), tier_policy=TierPolicy(high_load=1e3, defer_load=1e3)),
            transport=broker.factory)) for i in range(2)]
        await wait_for(lambda: server.metrics.accepted == 4 and server.snapshot()["pending"] == 0, 60,
                       "every update fused")
        ours = distill_learner(server).data.standardizer
        tasks = [c.task for c in clients]
        assert all(isinstance(t, DistillTask) and t.proxy is not None for t in tasks)
        theirs = [t.standardizer(t.proxy) for t in tasks if isinstance(t, DistillTask) and t.proxy is not None]
    assert ours is not None
    for scale in theirs:  # the same statistics, computed from the same proxy inputs on each side
        assert scale is not None
        np.testing.assert_array_equal(scale.mean, ours.mean)
        np.testing.assert_array_equal(scale.std, ours.std)
    assert ours.std.max() / ours.std.min() > 1e5  # the features' scales differ that much
    print(f"\nvector federation: accuracy {before:.3f} -> {server.test_accuracy:.3f}")
    assert server.test_accuracy > 0.6, server.metrics.timeline  # 4 classes: chance is 0.25
