"""FedAvg of a large model with BatchNorm, starting from pretrained weights, on the in-memory transport.

BatchNorm's ``num_batches_tracked`` is a 0-d tensor; the wire carries arrays of 1 to 4 dimensions, so
it arrives as shape (1,). Before this was handled, every client refused the global model of any
BatchNorm network (MobileNetV2 included) as ``shape_mismatch`` and FedAvg never started.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from waiting import wait_for

from koala_async.core.tiering import TierPolicy
from koala_async.io.memory import MemoryBroker
from koala_async.learning.models import InputSpec, build_model
from koala_async.nodes.client import ClientConfig, ClientNode, TrainSettings
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(90)


async def test_fedavg_of_a_batchnorm_model_from_pretrained_weights_runs_its_rounds(tmp_path: Path) -> None:
    pretrained = build_model("image-mobile", InputSpec("image", (1, 8, 8), 10), seed=11)
    path = tmp_path / "pretrained.safetensors"
    save_file({k: v.contiguous() for k, v in pretrained.state_dict().items()}, str(path))
    assert any(v.ndim == 0 for v in pretrained.state_dict().values())  # num_batches_tracked
    broker = MemoryBroker()
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(ServerNode(ServerConfig(
            mode="fedavg", large_model="image-mobile", large_weights=str(path), round_timeout=30),
            transport=broker.factory))
        first = {k: v.clone() for k, v in server.learner.model.state_dict().items()}
        assert all(torch.equal(first[k], v) for k, v in pretrained.state_dict().items())
        clients = [await stack.enter_async_context(ClientNode(ClientConfig(
            node_id=f"c{i}", shard=i, num_shards=2, max_updates=2, interval=0.05, mode="fedavg",
            train=TrainSettings(epochs=5, fedavg_epochs=1), keepalive=5,
            tier_policy=TierPolicy(high_load=1000.0, defer_load=1000.0)), transport=broker.factory))
            for i in range(2)]
        async with asyncio.timeout(60):
            await asyncio.gather(*(c.done() for c in clients))
        await wait_for(lambda: server.version == 2 and server.snapshot()["pending"] == 0, 30, "two rounds")
    assert server.metrics.accepted == 4 and dict(server.rejects.counts) == {}
    assert all(dict(c.rejects.counts) == {} for c in clients)
    averaged = server.learner.model.state_dict()
    tracked = [k for k, v in averaged.items() if v.ndim == 0]
    assert tracked and all(averaged[k].shape == () for k in tracked)
    assert not torch.equal(averaged["classifier.weight"], first["classifier.weight"])  # it learned something
    assert np.isfinite(server.test_accuracy)
