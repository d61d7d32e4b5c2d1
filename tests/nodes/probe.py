"""Test helpers for node tests on the in-memory transport: a probe that injects updates and statuses
on client topics and collects what the server publishes."""

from __future__ import annotations

import itertools
import time
from typing import Any, Self

import numpy as np

from koala_async.core.envelope import Knowledge, Update, decode, encode
from koala_async.core.topics import Topics
from koala_async.io.base import Incoming, LinkOptions
from koala_async.io.memory import MemoryBroker, MemoryTransport
from koala_async.learning.distill_learner import DistillLearner
from koala_async.nodes.common import status_payload
from koala_async.nodes.server import ServerNode

TOPICS = Topics("default")
_seq = itertools.count(int(time.time() * 1000))  # clock-based, as nodes number their messages


def distill_learner(server: ServerNode) -> DistillLearner:
    """The server's learner, typed (these tests run KOALA's)."""
    assert isinstance(server.learner, DistillLearner)
    return server.learner


class Probe:
    """``async with Probe(broker) as probe``: publishes as any client, records the knowledge versions."""

    def __init__(self, broker: MemoryBroker, *subscriptions: str) -> None:
        self.knowledge: dict[int, Knowledge] = {}
        self.seen: list[Incoming] = []
        self.link: MemoryTransport = broker.factory(LinkOptions(
            "probe", subscriptions=tuple((t, 1) for t in (TOPICS.knowledge, *subscriptions)), handler=self._take))

    def _take(self, msg: Incoming) -> None:
        self.seen.append(msg)
        if msg.topic == TOPICS.knowledge:
            message = decode(msg.payload)
            assert isinstance(message, Knowledge)
            self.knowledge[message.version] = message

    async def __aenter__(self) -> Self:
        await self.link.__aenter__()
        await self.link.wait_connected(5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.link.__aexit__(*exc)

    async def update(self, sender: str, learner: Any, base_version: int, logits: np.ndarray,
                     label_counts: np.ndarray | None = None) -> None:
        message = Update(sender=sender, seq=next(_seq), base_version=base_version, tier="image-small",
                         n_samples=50, proxy_id=learner.proxy_id, logits=logits.astype(np.float16),
                         label_counts=label_counts)
        await self.link.publish(TOPICS.update(sender), encode(message))

    async def status(self, sender: str, online: bool, state: str) -> None:
        await self.link.publish(TOPICS.client_status(sender), status_payload(sender, next(_seq), "client", online,
                                                                             state, {}), retain=True)
