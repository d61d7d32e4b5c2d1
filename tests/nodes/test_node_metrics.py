"""Metrics wired into real nodes: scraped over HTTP while a federation runs (in-memory transport, then
over a real Mosquitto), each figure agreeing with the node's own counters."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from contextlib import AsyncExitStack

import pytest
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_for

from koala_async.core.tiering import TierPolicy
from koala_async.core.topics import Topics
from koala_async.io.base import LinkOptions, TransportFactory
from koala_async.io.memory import MemoryBroker
from koala_async.nodes.client import ClientConfig, ClientNode, TrainSettings
from koala_async.nodes.common import node_transport
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(90)
TOPICS = Topics("default")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def client_config(i: int, **kw) -> ClientConfig:
    return ClientConfig(node_id=f"c{i}", shard=i, num_shards=2, max_updates=3, interval=0.01, tier="image-tiny",
                        train=TrainSettings(epochs=1), keepalive=5, metrics_port=0,
                        tier_policy=TierPolicy(high_load=1000.0, defer_load=1000.0), **kw)


async def scrape_federation(transport: TransportFactory | None, broker: str) -> tuple[Samples, Samples, dict]:
    """A server and two clients with metrics on free ports; scrapes both mid-run and once settled."""
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(ServerNode(
            ServerConfig(broker=broker, distill_steps=2, metrics_port=0, status_interval=0.2),
            transport=transport))
        clients = [await stack.enter_async_context(ClientNode(client_config(i, broker=broker), transport=transport))
                   for i in range(2)]
        url = server.telemetry.url  # type: ignore[union-attr]
        mid = await asyncio.to_thread(scrape, url)  # during the federation: served while it runs
        assert value(mid, "koala_node_info", node_id="server", role="server", federation="default") == 1
        connect = transport or node_transport(ServerConfig(broker=broker))
        async with connect(LinkOptions("intruder")) as link:  # one undecodable message: counted by reason
            await link.wait_connected(10)
            await link.publish(TOPICS.update("c0"), b"\x01not msgpack")
        async with asyncio.timeout(60):
            await asyncio.gather(*(c.done() for c in clients))
        await wait_for(lambda: server.metrics.accepted == 6 and server.snapshot()["pending"] == 0
                       and all(c.outbox.pending == 0 for c in clients), 30, "every update fused")
        await asyncio.sleep(0.3)
        served = await asyncio.to_thread(scrape, url)
        client = await asyncio.to_thread(scrape, clients[0].telemetry.url)  # type: ignore[union-attr]
        facts = {"version": server.version, "rejected": dict(server.rejects.counts),
                 "distill_passes": len(server.state.metrics.timeline) - 1, "sent": clients[0].updates_sent,
                 "accepted": clients[0].updates_accepted, "client_version": clients[0].task.version,
                 "server_messages_in": server.transport.stats.messages_in}
    return served, client, facts


def check(served: Samples, client: Samples, facts: dict) -> None:
    assert value(served, "koala_knowledge_version") == facts["version"] >= 1
    assert value(served, "koala_updates_accepted_total") == 6
    for reason, count in facts["rejected"].items():  # every reason, undecodable messages too
        assert value(served, "koala_updates_rejected_total", reason=reason) == count
    assert sum(facts["rejected"].values()) >= 1
    assert value(served, "koala_update_staleness_count") == 6
    assert value(served, "koala_update_fused_latency_seconds_count") == 6
    assert value(served, "koala_distillation_seconds_count") == facts["distill_passes"] >= 1
    assert value(served, "koala_clients_online") == 2
    assert value(served, "koala_mqtt_received_messages_total") == facts["server_messages_in"] > 6
    assert value(client, "koala_updates_sent_total") == facts["sent"] == 3
    assert value(client, "koala_updates_accepted_total") == facts["accepted"] == 3
    assert value(client, "koala_training_seconds_count") == 3
    assert value(client, "koala_knowledge_version") == facts["client_version"] >= 1
    assert value(client, "koala_updates_pending") == 0


async def test_metrics_are_scraped_from_a_running_federation_in_memory() -> None:
    started = time.perf_counter()
    served, client, facts = await scrape_federation(MemoryBroker().factory, "mqtt://127.0.0.1:1")
    check(served, client, facts)
    print(f"\nin-memory federation with metrics: {time.perf_counter() - started:.1f} s")


@pytest.mark.mosquitto
async def test_metrics_are_scraped_from_a_running_federation_over_mosquitto(mosquitto_broker: str) -> None:
    served, client, facts = await scrape_federation(None, mosquitto_broker)
    check(served, client, facts)
    assert value(served, "koala_mqtt_protocol_version") == 5
    assert value(client, "koala_mqtt_sent_bytes_total") > 0


async def test_without_a_metrics_port_nothing_is_served() -> None:
    server = ServerNode(ServerConfig(), transport=MemoryBroker().factory)
    assert server.telemetry.__enter__() is None  # a nullcontext: no registry, no thread, no port
