"""A whole federation over ``mqtts://`` with client certificates: a real Mosquitto TLS listener that
requires them, a real server and three real clients (nodes in this process, real TLS sockets), learning;
and a client given the wrong CA is refused with a message naming its CA file, and never connects.

Real infrastructure: about 30 s (three clients train five times each)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest
from waiting import wait_for

from koala_async.core.server_signing import write_keypair
from koala_async.core.tiering import TierPolicy
from koala_async.errors import BrokerUnavailable
from koala_async.nodes.client import ClientConfig, ClientNode, TrainSettings
from koala_async.nodes.server import ServerConfig, ServerNode
from tests.security.conftest import TLSBroker

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(120)]


def _tls(broker: TLSBroker, ca_file: str | None = None) -> dict[str, str]:
    return {"broker": broker.url, "ca_file": ca_file or broker.ca_file, "cert_file": broker.cert_file,
            "key_file": broker.key_file}


def _client(i: int, broker: TLSBroker, public_key: str, node_id: str = "", **tls: str) -> ClientConfig:
    return ClientConfig(node_id=node_id or f"c{i}", federation="tls", shard=i, num_shards=3, max_updates=5, interval=0.05,
                        tier="image-small", train=TrainSettings(epochs=3), server_public_key=public_key,
                        tier_policy=TierPolicy(high_load=1e3, defer_load=1e3, max_wait_s=1.0),
                        **{**_tls(broker), **tls})


async def test_a_federation_learns_over_mqtts_and_a_wrong_ca_never_connects(tls_broker: TLSBroker,
                                                                             tmp_path) -> None:
    public_key = write_keypair(tmp_path / "server.key")
    server_config = ServerConfig(federation="tls", distill_steps=40, status_interval=0.5,
                                 server_key_file=str(tmp_path / "server.key"), **_tls(tls_broker))
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(ServerNode(server_config))
        before = server.test_accuracy
        clients = [await stack.enter_async_context(ClientNode(_client(i, tls_broker, public_key)))
                   for i in range(3)]
        async with asyncio.timeout(90):
            await asyncio.gather(*(c.done() for c in clients))
        await wait_for(lambda: server.metrics.accepted == 15 and server.snapshot()["pending"] == 0, 30,
                       "every update fused")
        await wait_for(lambda: all(c.knowledge is not None and c.knowledge.version == server.version
                                   for c in clients), 20, "the latest signed knowledge at every client")

        wrong_ca = str(tls_broker.pki.other_ca_file)
        intruder = await stack.enter_async_context(ClientNode(_client(0, tls_broker, public_key, ca_file=wrong_ca, node_id="c3")))
        with pytest.raises(BrokerUnavailable) as refused:
            await intruder.transport.wait_connected(3)
        intruder_connects = intruder.transport.stats.connects
        transports = [server.transport, *(c.transport for c in clients)]
    message = str(refused.value)
    assert wrong_ca in message and "certificate could not be verified" in message, message
    assert intruder_connects == 0 and "c3" not in server.state.presence
    assert all(t.stats.mqtt_version in (4, 5) and t.stats.broker.startswith("mqtts://") for t in transports)
    assert [c.updates_accepted for c in clients] == [5, 5, 5]
    assert server.version >= 2 and server.test_accuracy > before + 0.1, server.metrics.timeline
