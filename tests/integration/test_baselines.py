"""The sync and fedavg baselines end to end over the embedded broker: server and clients in one loop.

Each federation must learn (held-out accuracy clearly above chance) in a couple of rounds, wait for
its selected clients (and only for those still there), and count what it drops.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import aiomqtt
import numpy as np
import pytest
from waiting import wait_for

from koala_async.core.envelope import Update, Weights, encode
from koala_async.core.tiering import TierPolicy
from koala_async.core.topics import Topics
from koala_async.io.broker import EmbeddedBroker
from koala_async.learning.averaging_learner import AveragingLearner
from koala_async.learning.buffered_learner import BufferedLearner
from koala_async.learning.distill_learner import DistillLearner
from koala_async.nodes.client import ClientConfig, ClientNode
from koala_async.nodes.config import TrainSettings
from koala_async.nodes.local_training import AveragingTask, DistillTask
from koala_async.nodes.pacing import Continuous, Rounds
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(150)  # every wait is bounded; this only catches a wedged event loop
TOPICS = Topics("default")
CHANCE = 0.1  # ten classes


async def publish_raw(url: str, topic: str, payload: bytes) -> None:
    host, port = url.removeprefix("mqtt://").split(":")
    async with asyncio.timeout(10):
        async with aiomqtt.Client(host, int(port), identifier=f"raw-{time.monotonic_ns()}") as client:
            await client.publish(topic, payload, qos=1)


def client_config(url: str, mode: str, i: int, updates: int, epochs: int = 5) -> ClientConfig:
    # Never defer training for load: the test shares a loaded box (this is not what is under test).
    return ClientConfig(node_id=f"c{i}", shard=i, num_shards=3, max_updates=updates, interval=0.2,
                        broker=url, mode=mode, tier="image-small", train=TrainSettings(epochs=epochs),
                        tier_policy=TierPolicy(high_load=1000.0, defer_load=1000.0))


async def run_rounds(stack: AsyncExitStack, server: ServerNode, clients: list[ClientNode],
                     rounds: int) -> None:
    try:
        async with asyncio.timeout(100):
            await asyncio.gather(*(c.done() for c in clients))
    except TimeoutError:
        pytest.fail(f"clients did not finish: {[c.updates_sent for c in clients]}, {server.snapshot()}")
    await wait_for(lambda: server.version >= rounds and server.snapshot()["pending"] == 0, 60,
                   f"round {rounds} published")


def test_the_mode_picks_pacing_and_learner_not_a_node_class() -> None:
    parts = {mode: ServerNode(ServerConfig(mode=mode)) for mode in ("async", "sync", "fedavg", "fedbuff")}
    assert [(type(n.pacing), type(n.learner)) for n in parts.values()] == [
        (Continuous, DistillLearner), (Rounds, DistillLearner), (Rounds, AveragingLearner),
        (Continuous, BufferedLearner)]
    assert parts["async"].pacing.warmup is not None and parts["fedbuff"].pacing.warmup is None
    assert type(ClientNode(ClientConfig(mode="fedavg")).task) is AveragingTask
    fedbuff = ClientNode(ClientConfig(mode="fedbuff")).task
    assert type(fedbuff) is AveragingTask and not fedbuff.in_rounds
    assert type(ClientNode(ClientConfig(mode="sync")).task) is DistillTask
    with pytest.raises(ValueError, match="mode"):
        ServerConfig(mode="gossip")


async def test_sync_koala_learns_in_rounds_and_stops_waiting_for_a_client_that_left(
        embedded_broker: EmbeddedBroker) -> None:
    url = embedded_broker.url
    async with AsyncExitStack() as stack:
        # c2 takes part in round 0 only, then goes away: round 1 must not wait for it. The clients come
        # up before the server, so the server reads all three online statuses (retained) before anyone
        # can deliver (nobody can train before the server publishes its proxy set): all three are
        # selected for round 0. Started after the server, a client whose status reached it after the
        # first delivery was not selected, and on a loaded machine its round-0 update came in after
        # the round closed (stale), which is the barrier's rule, not what this test is about.
        leaving = AsyncExitStack()
        leaver = await leaving.enter_async_context(ClientNode(client_config(url, "sync", 2, 1)))
        stayers = [await stack.enter_async_context(ClientNode(client_config(url, "sync", i, 2)))
                   for i in range(2)]
        server = await stack.enter_async_context(ServerNode(
            ServerConfig(broker=url, mode="sync", round_timeout=60)))
        try:
            async with asyncio.timeout(60):
                await leaver.done()
        finally:
            await leaving.aclose()  # goodbye status: online = false
        await run_rounds(stack, server, stayers, rounds=2)

        assert server.metrics.accepted_by_client == {"c0": 2, "c1": 2, "c2": 1}
        assert server.pacing.barrier.timed_out_rounds == 0  # nobody waited for c2's 60 s timeout
        assert server.version == 2  # one version per round: exactly two rounds
        assert server.metrics.staleness_max == 0  # every update was built on its own round
        assert server.test_accuracy > CHANCE + 0.4, server.metrics.timeline
        assert [c.readiness.trained_on[0] for c in stayers] == [1, 1]  # trained once per version: 0, then 1
        await wait_for(lambda: all(c.knowledge is not None and c.knowledge.version == 2 for c in stayers),
                       10, "the last knowledge at the clients")
        assert all(c.knowledge.mode == "sync" for c in stayers)

        # an update built on a finished round is stale, counted and dropped
        await publish_raw(url, TOPICS.update("late"), encode(Update(
            sender="late", seq=1, base_version=1, tier="image-small", n_samples=10, proxy_id=server.learner.proxy_id,
            logits=np.zeros((len(server.learner.proxy_x), 10), np.float16))))
        await wait_for(lambda: server.rejects.counts["stale"] == 1, 10, "the stale update counted")
        assert server.version == 2 and server.metrics.accepted == 5


async def test_fedavg_clients_train_the_large_model_and_the_server_averages(
        embedded_broker: EmbeddedBroker) -> None:
    url = embedded_broker.url
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(ServerNode(ServerConfig(
            broker=url, mode="fedavg", large_model="image-large", round_timeout=60)))
        clients = [await stack.enter_async_context(ClientNode(client_config(url, "fedavg", i, 2)))
                   for i in range(3)]
        start_accuracy = server.metrics.timeline[0][2]
        await run_rounds(stack, server, clients, rounds=2)

        assert server.version == 2 and server.metrics.accepted == 6
        assert dict(server.rejects.counts) == {}
        assert start_accuracy < 0.3
        assert server.test_accuracy > CHANCE + 0.5, server.metrics.timeline
        params = sum(int(np.prod(shape)) for shape in server.learner.layout.values())
        assert params > 500_000  # the large model, not a client tier
        for c in clients:
            snap = c.snapshot()
            assert snap["tier"] == "image-large" and snap["model_params"] == params
            assert snap["train_flops_per_sample"] > 1e6
            # two uploads of full float32 weights (plus a small msgpack header each)
            assert 2 * 4 * params < snap["bytes_up"] < 2 * 4 * params * 1.01
            assert snap["rss_peak_bytes"] > 0
            assert dict(c.rejects.counts) == {}
        # every upload got its verdict on the client's ack topic, as in KOALA
        await wait_for(lambda: all(c.updates_accepted == 2 for c in clients), 10, "two acks per client")
        await wait_for(lambda: all(c.task.global_model is not None and c.task.global_model.base_version == 2
                                   for c in clients), 10, "the last global model at the clients")

        # weights with a wrong shape, and logits where weights belong, are counted by reason
        bad = {name: np.zeros(shape, np.float32) for name, shape in server.learner.layout.items()}
        first = next(iter(bad))
        bad[first] = np.zeros((1,), np.float32)
        await publish_raw(url, TOPICS.update("rogue"), encode(Weights(
            sender="rogue", seq=1, base_version=2, model="image-large", n_samples=5, params=bad)))
        await publish_raw(url, TOPICS.update("rogue"), encode(Update(
            sender="rogue", seq=2, base_version=2, tier="image-small", n_samples=5, proxy_id="x",
            logits=np.zeros((3, 10), np.float16))))
        await wait_for(lambda: server.rejects.total == 2, 10, "two rejects")
        assert dict(server.rejects.counts) == {"shape_mismatch": 1, "wrong_kind": 1}
        assert server.version == 2
