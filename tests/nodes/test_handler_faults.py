"""A message that makes a node's handling raise costs that message, never the node: the exception is
counted by class in the node's status and report, and repeated log lines are rate-limited.

Real nodes on the in-memory transport; the fault is injected by a test double wrapping one method of
the real node (a bug nobody foresaw), since no known input reaches an exception any more."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from waiting import wait_for

from koala_async.core.envelope import Update, encode
from koala_async.core.faults import FaultCounter
from koala_async.core.tiering import TierPolicy
from koala_async.core.topics import Topics
from koala_async.io.base import LinkOptions
from koala_async.io.memory import MemoryBroker
from koala_async.nodes.client import ClientConfig, ClientNode, TrainSettings
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(60)
TOPICS = Topics("default")


async def test_a_server_handler_exception_is_counted_by_class_and_logged_once(caplog) -> None:
    broker = MemoryBroker()
    async with ServerNode(ServerConfig(distill_steps=1), transport=broker.factory) as server, \
            broker.factory(LinkOptions("probe")) as probe:
        await probe.wait_connected(5)
        decide = server.state.decide

        def buggy(message, sender, *args, **kwargs):  # a bug that only one sender's messages reach
            if sender == "boom":
                raise ZeroDivisionError("a bug")
            return decide(message, sender, *args, **kwargs)

        server.state.decide = buggy  # type: ignore[method-assign]
        learner = server.learner
        seq = int(time.time() * 1000)
        logits = np.zeros((len(learner.proxy_x), 10), np.float16)
        with caplog.at_level(logging.ERROR):
            for i, sender in enumerate(["boom"] * 40 + ["c1"]):
                update = Update(sender=sender, seq=seq + i, base_version=0, tier="image-small", n_samples=5,
                                proxy_id=learner.proxy_id, logits=logits)
                await probe.publish(TOPICS.update(sender), encode(update))
            await wait_for(lambda: server.metrics.accepted == 1, 10, "the honest update accepted")
        snapshot = server.snapshot()
    assert snapshot["handler_errors"] == 40
    assert snapshot["handler_errors_by_class"] == {"ZeroDivisionError": 40}
    failures = [r for r in caplog.records if "failed on" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]  # the first, with its traceback
    assert failures[0].exc_info is not None


async def test_a_client_receive_exception_is_counted_and_the_client_goes_on() -> None:
    broker = MemoryBroker()
    config = ClientConfig(node_id="c0", num_shards=4, max_updates=3, interval=0.01, tier="image-tiny",
                          train=TrainSettings(epochs=1), tier_policy=TierPolicy(high_load=1e3, defer_load=1e3, max_wait_s=0.5))
    async with ServerNode(ServerConfig(distill_steps=5), transport=broker.factory) as server:
        client = ClientNode(config, transport=broker.factory)
        take = client.task.take
        failed: list[int] = []

        def buggy(topic, message, inputs):  # the first two knowledge messages hit a bug
            if topic == TOPICS.knowledge and len(failed) < 2:
                failed.append(message.version)
                raise KeyError("a bug")
            return take(topic, message, inputs)

        client.task.take = buggy  # type: ignore[method-assign]
        async with client:
            await wait_for(lambda: len(failed) == 2, 20, "two knowledge messages to hit the bug")
            async with __import__("asyncio").timeout(40):
                await client.done()
            await wait_for(lambda: client.updates_accepted == 3, 10, "the verdicts")
            await wait_for(lambda: client.knowledge is not None, 20, "a later knowledge version taken")
            snapshot = client.snapshot()
        assert server.metrics.accepted == 3
    assert snapshot["handler_errors"] == 2 and snapshot["handler_errors_by_class"] == {"KeyError": 2}
    assert client.knowledge is not None and client.knowledge.version > max(failed)  # later knowledge was taken


def test_repeats_are_summarised_once_per_interval_and_new_classes_are_capped(caplog) -> None:
    now = [0.0]
    faults = FaultCounter(logging.getLogger("test.faults"), "x: the handler", interval=30, clock=lambda: now[0],
                          max_classes=2)
    with caplog.at_level(logging.ERROR, logger="test.faults"):
        for i in range(100):
            now[0] = i  # one a second
            faults.record(ValueError("v"), "t")
        faults.record(KeyError("k"), "t")
        faults.record(TypeError("t"), "t")  # a third class: counted as "other"
    assert faults.counts == {"ValueError": 100, "KeyError": 1, "other": 1}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 + 3 + 1  # the first ValueError, 3 summaries (at 30, 60, 90 s), KeyError, other
    assert "30 more messages with ValueError" in lines[1]
