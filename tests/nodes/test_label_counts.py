"""Label histograms are private metadata a logit-only KOALA does not need: off by default, in the
config class and in the shipped node config; a client sends them only when asked to."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from probe import TOPICS, Probe
from waiting import wait_for

from koala_async.config import load_into
from koala_async.core.envelope import Update, decode
from koala_async.core.tiering import TierPolicy
from koala_async.io.memory import MemoryBroker
from koala_async.nodes.client import ClientConfig, ClientNode, TrainSettings
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


async def sent_update(**extra: bool) -> Update:
    broker = MemoryBroker()
    config = ClientConfig(node_id="c0", max_updates=1, interval=0.01, tier="image-tiny",
                          train=TrainSettings(epochs=1), tier_policy=TierPolicy(high_load=1e3, defer_load=1e3),
                          **extra)  # type: ignore[arg-type]
    async with ServerNode(ServerConfig(distill_steps=1, large_model="image-small"), transport=broker.factory), \
            Probe(broker, TOPICS.update("c0")) as probe, ClientNode(config, transport=broker.factory):
        await wait_for(lambda: any(m.topic == TOPICS.update("c0") for m in probe.seen), 30, "an update")
    update = decode(next(m.payload for m in probe.seen if m.topic == TOPICS.update("c0")))
    assert isinstance(update, Update)
    return update


async def test_a_default_client_sends_no_label_histogram() -> None:
    assert (await sent_update()).label_counts is None
    asked = await sent_update(send_label_counts=True)
    assert asked.label_counts is not None and asked.label_counts.sum() == asked.n_samples


def test_the_shipped_client_config_sends_none() -> None:
    table = tomllib.loads((ROOT / "nodes" / "client.toml").read_text())["client"]
    assert load_into(ClientConfig, table, prefix="client").send_label_counts is False
