"""MQTT 5 where the broker offers it, 3.1.1 where not: Mosquitto (v5), amqtt (refuses with a CONNACK),
and a broker that hangs up on a v5 CONNECT without answering (what RabbitMQ 3.10 does; here a proxy
in front of Mosquitto plays it, so the fast suite covers it without RabbitMQ)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest

from koala_async.core.backoff import Backoff
from koala_async.io.broker import EmbeddedBroker, free_port
from koala_async.io.transport import BrokerAddress, Incoming, MqttTransport, Will

FAST = Backoff(initial=0.1, cap=0.4)

pytestmark = pytest.mark.timeout(60)


async def collect(transport: MqttTransport, quiet: float) -> list[Incoming]:
    """Every message that arrives until none has for ``quiet`` seconds."""
    got = []
    with contextlib.suppress(TimeoutError):
        while True:
            async with asyncio.timeout(quiet):
                got.append(await anext(transport.messages()))
    return got


async def expired_while_away(url: str, mqtt_version: int | None) -> tuple[MqttTransport, set[str]]:
    """Which of three updates a persistent subscriber gets after 2 s away: one that expires after 1 s,
    one after 60 s, one never."""
    addr = BrokerAddress.parse(url)

    def subscriber() -> MqttTransport:
        return MqttTransport(addr, "late-sub", clean_session=False, subscriptions=(("e/#", 1),), backoff=FAST,
                         mqtt_version=mqtt_version)

    async with subscriber() as sub:
        await sub.wait_connected(10)
    async with MqttTransport(addr, "pub", backoff=FAST, mqtt_version=mqtt_version) as pub:
        await pub.wait_connected(10)
        await pub.publish("e/short", b"s", expiry=1)
        await pub.publish("e/long", b"l", expiry=60)
        await pub.publish("e/forever", b"f")
    await asyncio.sleep(2.2)
    async with subscriber() as sub:
        await sub.wait_connected(10)
        got = {m.topic for m in await collect(sub, quiet=1.0)}
    return sub, got


async def test_mosquitto_speaks_5_and_drops_an_update_that_expired_while_the_subscriber_was_away(
        mosquitto_broker: str) -> None:
    sub, got = await expired_while_away(mosquitto_broker, mqtt_version=None)
    assert sub.stats.mqtt_version == 5
    # the session outlived the disconnect (session expiry), the 1 s update did not (message expiry)
    assert got == {"e/long", "e/forever"}


async def test_on_3_1_1_the_same_update_arrives_stale(mosquitto_broker: str) -> None:
    # the control: without MQTT 5 there is no expiry, which is what makes the test above mean something
    sub, got = await expired_while_away(mosquitto_broker, mqtt_version=4)
    assert sub.stats.mqtt_version == 4
    assert got == {"e/short", "e/long", "e/forever"}


async def test_a_retained_message_expires_too(mosquitto_broker: str) -> None:
    addr = BrokerAddress.parse(mosquitto_broker)
    async with MqttTransport(addr, "pub", backoff=FAST) as pub:
        await pub.wait_connected(10)
        await pub.publish("r/short", b"s", retain=True, expiry=1)
        await pub.publish("r/kept", b"k", retain=True)
    await asyncio.sleep(2.2)
    async with MqttTransport(addr, "reader", subscriptions=(("r/#", 1),), backoff=FAST) as reader:
        assert [m.topic for m in await collect(reader, quiet=1.0)] == ["r/kept"]


async def test_expiry_must_be_positive(mosquitto_broker: str) -> None:
    async with MqttTransport(BrokerAddress.parse(mosquitto_broker), "pub", backoff=FAST) as pub:
        with pytest.raises(ValueError, match="expiry must be a positive"):
            await pub.publish("x", b"x", expiry=0)


async def test_amqtt_refuses_5_so_the_transport_speaks_3_1_1_and_remembers(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="koala_async.io.transport")
    port = free_port()
    addr = BrokerAddress.parse(f"mqtt://127.0.0.1:{port}")
    brokers = [await EmbeddedBroker(port=port).__aenter__()]
    try:
        async with MqttTransport(addr, "t311", subscriptions=(("a/#", 1),), backoff=FAST) as t:
            await t.wait_connected(10)
            assert t.stats.mqtt_version == 4
            # the broker restarts (before any delivery: amqtt 0.12 can hang in shutdown after one); the
            # transport reconnects in 3.1.1 straight away, without asking for 5 again
            async with asyncio.timeout(10):
                await brokers.pop().__aexit__(None, None, None)
                while t.connected.is_set():
                    await asyncio.sleep(0.02)
            brokers.append(await EmbeddedBroker(port=port).__aenter__())
            await t.wait_connected(15)
            assert t.stats.connects == 2 and t.stats.mqtt_version == 4
            async with MqttTransport(addr, "t311-pub", backoff=FAST) as pub:
                await pub.publish("a/x", b"with an expiry it cannot carry", expiry=5, timeout=10)
                assert pub.stats.mqtt_version == 4
            async with asyncio.timeout(10):
                assert (await anext(t.messages())).payload == b"with an expiry it cannot carry"
    finally:
        async with asyncio.timeout(10):
            for broker in brokers:
                await broker.__aexit__(None, None, None)
    refusals = [r.getMessage() for r in caplog.records if "refused MQTT 5" in r.getMessage()]
    assert len([r for r in refusals if r.startswith("t311:")]) == 1, refusals


async def test_amqtt_answers_nothing_to_a_v5_connect_with_a_will_so_the_probe_window_decides(
        embedded_broker: EmbeddedBroker) -> None:
    # amqtt misreads a v5 will and waits for bytes that never come: without the probe window the
    # transport waited out 10 s connect timeouts on v5 forever and never connected; on loopback the
    # window is about half a second
    addr = BrokerAddress.parse(embedded_broker.url)
    will = Will("w/status", b"lost")
    started = time.monotonic()
    async with MqttTransport(addr, "t-will", will=will, backoff=FAST) as t:
        await t.wait_connected(10)
        assert t.stats.mqtt_version == 4
        assert time.monotonic() - started < 2.5
    async with MqttTransport(addr, "t-known", will=will, backoff=FAST, mqtt_version=4) as known:
        started = time.monotonic()
        await known.wait_connected(5)
        assert time.monotonic() - started < 1  # asking for 3.1.1 outright skips the probe


@contextlib.asynccontextmanager
async def hangs_up_on_v5(broker_port: int) -> AsyncIterator[int]:
    """A proxy to ``broker_port`` that closes any connection whose CONNECT asks for protocol level 5,
    without a CONNACK, as RabbitMQ 3.10's MQTT plugin does. Yields its port."""
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # CONNECT: fixed header (1 + 1 length byte for a small packet), 2-byte name length, "MQTT", level
        head = await reader.readexactly(9)
        if head[8] == 5:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", broker_port)
        up_writer.write(head)
        for task in (pipe(reader, up_writer), pipe(up_reader, writer)):
            tasks.add(t := asyncio.create_task(task))
            t.add_done_callback(tasks.discard)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_broker_that_hangs_up_on_5_is_spoken_to_in_3_1_1_without_waiting(mosquitto_broker: str) -> None:
    async with hangs_up_on_v5(BrokerAddress.parse(mosquitto_broker).port) as port:
        started = time.monotonic()
        addr = BrokerAddress.parse(f"mqtt://127.0.0.1:{port}")
        async with MqttTransport(addr, "t-hangup", subscriptions=(("h/#", 1),), backoff=FAST) as t:
            await t.wait_connected(15)
            took = time.monotonic() - started
            assert t.stats.mqtt_version == 4 and t.stats.connects == 1
            # not aiomqtt's 10 s connect timeout: the close before the CONNACK counts as a refusal at once
            assert took < 3, f"fell back after {took:.1f}s"
            await t.publish("h/x", b"through the proxy")
            async with asyncio.timeout(10):
                assert (await anext(t.messages())).payload == b"through the proxy"
