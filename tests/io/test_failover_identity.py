"""After a failover to another broker the transport connects under a new client id (``<id>~<n>``): in a
RabbitMQ cluster the old id cannot subscribe again once its node died (tests/cluster); here, on two
real Mosquittos, the id moves on with the broker and stays put across a reconnect to the same one."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from koala_async.core.backoff import Backoff
from koala_async.io.transport import Incoming, MqttTransport, parse_brokers

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(60)]


async def test_a_failover_connects_under_a_new_client_id_and_subscriptions_work_there(
        mosquitto_factory: Callable[[], tuple[str, subprocess.Popen]], tmp_path: Path) -> None:
    first, first_proc = mosquitto_factory()
    second, _ = mosquitto_factory()
    got: list[Incoming] = []
    async with MqttTransport(parse_brokers([first, second]), "node-x", subscriptions=(("t/#", 1),),
                             handler=got.append, backoff=Backoff(0.1, 0.4)) as sub:
        await sub.wait_connected(10)
        assert sub.identity(sub.address) == "node-x"
        first_proc.kill()
        first_proc.wait(5)
        async with asyncio.timeout(20):
            while sub.stats.broker != second or not sub.connected.is_set():
                await asyncio.sleep(0.05)
        assert sub.identity(sub.address) == "node-x~1"
        async with MqttTransport(parse_brokers(second), "pub") as pub:
            await pub.wait_connected(10)
            await asyncio.sleep(0.2)  # the subscription is made right after the CONNACK
            await pub.publish("t/1", b"after the failover", qos=1)
            async with asyncio.timeout(10):
                while not got:
                    await asyncio.sleep(0.05)
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("mosquitto-*.log"))
    assert " as node-x~1 " in logs and got[0].payload == b"after the failover"
