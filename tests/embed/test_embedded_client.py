"""The runtime as a library inside a gateway's own asyncio program: one event loop runs the program's
periodic tasks, an embedded broker, a real ServerNode and a ClientNode fed samples as they come.

Every wait is bounded; each test asserts behaviour (ticks on time, updates trained and acknowledged,
events seen, nothing left running), not speed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator

import numpy as np
import pytest
from waiting import wait_for

from koala_async.core.tiering import TierPolicy
from koala_async.errors import DataError
from koala_async.io.broker import EmbeddedBroker
from koala_async.learning.data import federate
from koala_async.nodes.client import ClientConfig, ClientNode, TrainSettings
from koala_async.nodes.events import (
    Connected,
    Event,
    KnowledgeChanged,
    TierChanged,
    UpdateAccepted,
    UpdatePublished,
    UpdateRejected,
)
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(120)
FED = "gw"


def private_pool(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Digits samples a simulated sensor hands out (the federation's private pool, not proxy/test)."""
    data = federate("digits", seed, 1, 0.5).client(0)
    return data.x, data.y


def server_config(url: str, **kw: object) -> ServerConfig:
    return ServerConfig(broker=url, federation=FED, distill_steps=5, status_interval=0.5, **kw)  # type: ignore[arg-type]


def embedded_config(url: str, **kw: object) -> ClientConfig:
    base: dict[str, object] = {"broker": url, "federation": FED, "node_id": "gw-1", "dataset": "none",
                               "tier": "image-small", "num_classes": 10, "interval": 0.1, "min_samples": 40, "max_samples": 300,
                               "train": TrainSettings(epochs=2),
                               # the box is shared: never defer training for the load other jobs make
                               "tier_policy": TierPolicy(high_load=1e9, defer_load=1e9)}
    base.update(kw)
    return ClientConfig(**base)  # type: ignore[arg-type]


async def collect(stream: AsyncIterator[Event], into: list[Event]) -> None:
    async for event in stream:
        into.append(event)


async def test_periodic_task_keeps_its_beat_while_the_client_trains(embedded_broker: EmbeddedBroker) -> None:
    x, y = private_pool()
    period, lateness = 0.05, []
    events: list[Event] = []

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + period
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            lateness.append(loop.time() - due)
            due += period

    async def sensor(client: ClientNode) -> None:
        for start in range(0, len(x), 20):  # 20 new labelled samples every 100 ms
            client.add_samples(x[start:start + 20], y[start:start + 20])
            await asyncio.sleep(0.1)

    async with ServerNode(server_config(embedded_broker.url)) as server:
        async with ClientNode(embedded_config(embedded_broker.url, train=TrainSettings(epochs=5))) as client:
            collector = asyncio.create_task(collect(client.events(), events))
            beat, feed = asyncio.create_task(ticker()), asyncio.create_task(sensor(client))
            try:
                # at least 4 s of ticks, so they overlap several trainings (5 epochs each)
                await wait_for(lambda: client.updates_sent >= 3 and client.updates_accepted >= 2
                               and len(lateness) >= 80, 60, "three updates published and two acknowledged")
            finally:
                beat.cancel()
                feed.cancel()
                outcomes = await asyncio.gather(beat, feed, return_exceptions=True)
            failures = [o for o in outcomes if not isinstance(o, (asyncio.CancelledError, type(None)))]
            assert not failures, f"the program's own tasks failed: {failures}"
        async with asyncio.timeout(5):
            await collector  # the stream ends by itself when the client shuts down
        assert server.metrics.accepted_by_client.get("gw-1", 0) >= 2

    assert len(lateness) >= 80
    worst = max(lateness)
    print(f"\n{len(lateness)} ticks, worst lateness {worst * 1000:.1f} ms, "
          f"p50 {np.median(lateness) * 1000:.1f} ms; {client.updates_sent} updates")
    assert worst < 0.1, f"a 50 ms tick was {worst * 1000:.0f} ms late while the client trained"
    assert client.trainer.epochs_done >= 15  # it really trained, three times
    assert client.samples.seen > 40  # and got samples while running
    kinds = {type(e) for e in events}
    assert {Connected, TierChanged, KnowledgeChanged, UpdatePublished, UpdateAccepted} <= kinds
    published = [e.seq for e in events if isinstance(e, UpdatePublished)]
    accepted = [e.seq for e in events if isinstance(e, UpdateAccepted)]
    assert set(accepted) <= set(published) and accepted


async def test_a_rejected_update_reaches_the_client_as_an_event(embedded_broker: EmbeddedBroker) -> None:
    config = embedded_config(embedded_broker.url, dataset="digits", tier="image-tiny", max_updates=1)
    server_cfg = server_config(embedded_broker.url, accepted_tiers=("image-medium",))
    async with ServerNode(server_cfg) as server, ClientNode(config) as client:
            server_stream = server.events()
            stream = client.events()
            async with asyncio.timeout(60):
                async for event in stream:
                    if isinstance(event, UpdateRejected):
                        break
    assert event.reason == "tier_not_accepted" and event.client == "gw-1"
    assert client.updates_rejected == {"tier_not_accepted": 1} and client.updates_accepted == 0
    assert server.rejects.counts["tier_not_accepted"] == 1
    seen_by_server = [e async for e in server_stream]  # ended when the server stopped
    verdicts = [e for e in seen_by_server if isinstance(e, UpdateRejected)]
    assert [(v.client, v.seq, v.reason) for v in verdicts] == [("gw-1", event.seq, "tier_not_accepted")]
    assert server.events_dropped == 0  # (a stream sees what happens after it is asked for)


async def test_add_samples_grows_a_running_client_within_bounds(embedded_broker: EmbeddedBroker) -> None:
    x, y = private_pool()
    config = embedded_config(embedded_broker.url, max_samples=100, min_samples=30, retention="newest",
                             num_classes=None)
    async with ServerNode(server_config(embedded_broker.url)) as server:
        client = ClientNode(config)
        with pytest.raises(DataError, match="number of classes"):  # unknown until the proxy set arrives
            client.add_samples(x[:5], y[:5])
        async with client:
            await wait_for(lambda: client.proxy is not None, 20, "the proxy set")
            assert client.samples.num_classes == server.learner.spec.num_classes  # inferred from the server
            client.add_samples(x[:20], y[:20])
            await asyncio.sleep(0.5)
            assert client.updates_sent == 0  # 20 < min_samples: no training yet
            for start in range(20, 260, 40):
                client.add_samples(x[start:start + 40], y[start:start + 40])
            assert len(client.samples) == 100 and client.samples.seen == 260  # bounded: newest 100
            _, stored_y = client.samples.arrays()
            np.testing.assert_array_equal(np.sort(stored_y), np.sort(y[160:260]))
            before = client.samples.arrays()
            for bad_x, bad_y, match in (
                    (x[:3, :, :4], y[:3], "shape"),  # wrong input shape
                    (x[:3], y[:2], "labels"),  # count mismatch
                    (x[:3], np.array([0, 1, 10]), r"\[0, 10\)"),  # label out of range
                    (x[:3], np.array([0.0, 1.0, 2.0]), "integer"),  # float labels
                    (np.full_like(x[:3], np.nan), y[:3], "NaN"),
                    (x[:3].astype(str), y[:3], "real numbers")):
                with pytest.raises(DataError, match=match):
                    client.add_samples(bad_x, bad_y)
            with pytest.raises(RuntimeError, match="event loop thread"):
                await asyncio.to_thread(client.add_samples, x[:3], y[:3])
            after = client.samples.arrays()
            np.testing.assert_array_equal(before[0], after[0])
            assert client.samples.seen == 260
            await wait_for(lambda: client.updates_sent >= 1, 40, "training on the fed samples")
            assert client.readiness.trained_on is not None and client.readiness.trained_on[1] == 260
            client.add_samples(x[260:300], y[260:300])
            await wait_for(lambda: client.readiness.trained_on is not None and client.readiness.trained_on[1] == 300, 40,
                           "a training that includes the new samples")
    assert len(client.samples) == 100


async def test_cancelling_the_callers_task_unwinds_everything(embedded_broker: EmbeddedBroker,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    root_handlers, sigint = list(logging.getLogger().handlers), signal.getsignal(signal.SIGINT)
    # 10,000 epochs: far longer than the test, so only an interrupted training lets it finish.
    config = embedded_config(embedded_broker.url, dataset="digits", train=TrainSettings(epochs=10_000))
    before = set(asyncio.all_tasks())
    async with ServerNode(server_config(embedded_broker.url)):
        client = ClientNode(config)
        entered = asyncio.Event()

        async def gateway_program() -> None:
            async with client:
                entered.set()
                await asyncio.Event().wait()  # the program's own work, forever

        task = asyncio.create_task(gateway_program())
        await wait_for(lambda: entered.is_set() and client.state == "training" and bool(client._workers.running),
                       40, "the client to be training in its worker thread")
        task.cancel()
        async with asyncio.timeout(15):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert not client._workers.running, "a training thread outlived the node"
        assert client.trainer.epochs_done < 10_000
        assert all(t.done() for t in client._tasks) and client.transport._runner.done()
    gc.collect()
    await asyncio.sleep(0.1)
    assert "Task was destroyed" not in caplog.text
    # the library configured no logging and installed no signal handler in the caller's process/loop
    assert logging.getLogger().handlers == root_handlers and signal.getsignal(signal.SIGINT) is sigint
    assert not getattr(asyncio.get_running_loop(), "_signal_handlers", {})
    assert not [t for t in asyncio.all_tasks() - before if _is_node_task(t)]


def _is_node_task(task: asyncio.Task[object]) -> bool:
    """Tasks the nodes or their transports own (the broker fixture's own tasks are not ours)."""
    code = getattr(task.get_coro(), "cr_code", None)
    filename = code.co_filename if code is not None else ""
    return "koala_async" in filename or "aiomqtt" in filename
