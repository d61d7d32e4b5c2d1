"""The MQTT transport against real brokers: delivery, retained state, reconnects, bounded waits."""

from __future__ import annotations

import asyncio

import pytest

from koala_async.core.backoff import Backoff
from koala_async.errors import BrokerUnavailable, ConfigError, TransportError
from koala_async.io.broker import EmbeddedBroker, free_port
from koala_async.io.transport import BrokerAddress, Incoming, MqttTransport

FAST = Backoff(initial=0.1, cap=0.4)

pytestmark = pytest.mark.timeout(60)  # every wait is bounded; this only catches a wedged event loop


async def next_message(transport: MqttTransport, timeout: float = 10.0) -> Incoming:
    async with asyncio.timeout(timeout):
        return await anext(transport.messages())


async def no_message(transport: MqttTransport, wait: float = 0.5) -> None:
    try:
        async with asyncio.timeout(wait):
            msg = await anext(transport.messages())
    except TimeoutError:
        return
    pytest.fail(f"unexpected message on {msg.topic}")


def test_broker_address_parse() -> None:
    a = BrokerAddress.parse("mqtt://user:p%40ss@broker.lan:1884")
    assert (a.host, a.port, a.username, a.password, a.tls) == ("broker.lan", 1884, "user", "p@ss", False)
    assert str(a) == "mqtt://broker.lan:1884"
    assert BrokerAddress.parse("mqtts://gw").port == 8883 and BrokerAddress.parse("mqtts://gw").tls
    assert BrokerAddress.parse("10.0.0.5").port == 1883
    with pytest.raises(ConfigError, match="scheme"):
        BrokerAddress.parse("http://x:1883")
    with pytest.raises(ConfigError, match="port"):
        BrokerAddress.parse("mqtt://x:notaport")


async def test_publish_and_receive_with_retained_state(broker_url: str) -> None:
    addr = BrokerAddress.parse(broker_url)
    async with MqttTransport(addr, "t-pub", backoff=FAST) as pub:
        await pub.wait_connected(10)
        await pub.publish("t/state", b"retained-1", retain=True)
        async with MqttTransport(addr, "t-sub", subscriptions=(("t/#", 1),), backoff=FAST) as sub:
            await sub.wait_connected(10)
            first = await next_message(sub)
            assert (first.topic, first.payload, first.retain) == ("t/state", b"retained-1", True)
            await pub.publish("t/live", b"x" * 20_000)
            live = await next_message(sub)
            assert (live.topic, live.payload, live.retain) == ("t/live", b"x" * 20_000, False)
            assert sub.stats.messages_in == 2 and sub.stats.bytes_in == len(b"retained-1") + 20_000
        assert pub.stats.messages_out == 2 and pub.stats.bytes_out == len(b"retained-1") + 20_000


async def test_only_subscribed_topics_are_delivered(broker_url: str) -> None:
    # amqtt replays to a connecting client the retained messages of every other client's filters;
    # the transport must not hand those to its node
    addr = BrokerAddress.parse(broker_url)
    async with MqttTransport(addr, "watcher", subscriptions=(("f/+/status", 1),), backoff=FAST) as watcher:
        await watcher.wait_connected(10)
        async with MqttTransport(addr, "writer", backoff=FAST) as writer:
            await writer.wait_connected(10)
            await writer.publish("f/a/status", b"status", retain=True)
            await writer.publish("f/knowledge", b"knowledge", retain=True)
        assert (await next_message(watcher)).topic == "f/a/status"
        async with MqttTransport(addr, "late", subscriptions=(("f/knowledge", 1),), backoff=FAST) as late:
            await late.wait_connected(10)
            msg = await next_message(late)
            assert (msg.topic, msg.payload) == ("f/knowledge", b"knowledge")
            await no_message(late)


async def test_a_handler_gets_every_message_in_order_and_survives_its_own_errors(broker_url: str) -> None:
    # A burst (longer than one drain slice) arrives faster than one wake-up per message: the transport
    # drains what aiomqtt queued behind the first, and each message still reaches the handler once,
    # in order.
    addr = BrokerAddress.parse(broker_url)
    got: list[bytes] = []

    def handler(msg: Incoming) -> None:
        if msg.payload == b"13":
            raise RuntimeError("a bug in the consumer")
        got.append(msg.payload)

    async with MqttTransport(addr, "h-sub", subscriptions=(("h/#", 1),), backoff=FAST, handler=handler) as sub:
        await sub.wait_connected(10)
        async with MqttTransport(addr, "h-pub", backoff=FAST) as pub:
            await pub.wait_connected(10)
            await asyncio.gather(*(pub.publish("h/burst", str(i).encode()) for i in range(600)))
            async with asyncio.timeout(10):
                while len(got) < 599:
                    await asyncio.sleep(0.01)
        assert got == [str(i).encode() for i in range(600) if i != 13]
        assert sub.stats.handler_errors == 1 and sub.stats.messages_in == 600
        assert sub.stats.connects == 1 and sub.stats.disconnects == 0  # the error did not drop the link
        await no_message(sub)  # handed over, never queued


async def test_wait_connected_and_publish_are_bounded_without_a_broker() -> None:
    port = free_port()
    addr = BrokerAddress.parse(f"mqtt://127.0.0.1:{port}")
    async with MqttTransport(addr, "lonely", backoff=FAST) as t:
        with pytest.raises(BrokerUnavailable) as info:
            await t.wait_connected(timeout=0.5)
        assert info.value.address == f"mqtt://127.0.0.1:{port}"
        assert t.stats.last_error
        with pytest.raises(TransportError, match="timed out"):
            await t.publish("a/b", b"x", timeout=0.3)
        assert t.stats.connects == 0


async def test_reconnects_after_a_broker_restart_and_resubscribes() -> None:
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    addr = BrokerAddress.parse(url)
    connects = []

    async def on_connect(t: MqttTransport) -> None:
        connects.append(t.stats.connects)
        await t.publish("state/phoenix", b"%d" % len(connects), retain=True)

    async def retained_state() -> bytes:
        async with MqttTransport(addr, "reader", subscriptions=(("state/#", 1),), backoff=FAST) as reader:
            return (await next_message(reader)).payload

    # amqtt can take very long to shut down while a client is still connected, so each broker is
    # stopped with a bound, and the second only after the transport has left
    brokers = [await EmbeddedBroker(port=port).__aenter__()]
    try:
        async with MqttTransport(addr, "phoenix", subscriptions=(("r/#", 1),), on_connect=on_connect,
                             backoff=FAST) as t:
            await t.wait_connected(10)
            assert await retained_state() == b"1"
            async with asyncio.timeout(10):
                await brokers.pop().__aexit__(None, None, None)
                while t.connected.is_set():
                    await asyncio.sleep(0.02)
            assert t.stats.disconnects == 1
            # a fresh broker on the same port: no retained state, no sessions
            brokers.append(await EmbeddedBroker(port=port).__aenter__())
            async with asyncio.timeout(15):
                while t.stats.connects < 2:
                    await asyncio.sleep(0.05)
            assert connects == [1, 2]
            assert await retained_state() == b"2"  # on_connect republished the lost retained state
            # the subscription is back: a message published now is delivered
            async with MqttTransport(addr, "other", backoff=FAST) as other:
                await other.wait_connected(10)
                await other.publish("r/after", b"after")
            msg = await next_message(t)
            assert (msg.topic, msg.payload) == ("r/after", b"after")
    finally:
        async with asyncio.timeout(10):
            for broker in brokers:
                await broker.__aexit__(None, None, None)


async def test_link_lost_during_on_connect_is_noticed_and_recovered(embedded_broker: EmbeddedBroker) -> None:
    """A link that dies while on_connect is still running must not leave the transport believing it is
    connected: it reconnects, runs on_connect again, and a later publish reaches the broker."""
    from koala_async.tools.linkproxy import LinkProxy

    gate = asyncio.Event()
    calls = 0

    async def on_connect(t: MqttTransport) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()  # the first connection's hook is still running when its link dies
        await t.publish("t/hello", f"hello-{calls}".encode(), retain=True)

    async with LinkProxy(embedded_broker.port) as proxy:
        async with MqttTransport(BrokerAddress.parse(proxy.url), "t-hook", on_connect=on_connect,
                             backoff=FAST) as t:
            await t.wait_connected(10)
            proxy.cut()
            await asyncio.sleep(0.5)
            proxy.restore()
            gate.set()
            async with asyncio.timeout(20):
                while t.stats.connects < 2:
                    await asyncio.sleep(0.05)
            await t.publish("t/after", b"x", timeout=10)
        addr = BrokerAddress.parse(embedded_broker.url)
        async with MqttTransport(addr, "t-check", subscriptions=(("t/hello", 1),), backoff=FAST) as check:
            msg = await next_message(check)
            assert msg.payload.startswith(b"hello-")
    assert calls >= 2
