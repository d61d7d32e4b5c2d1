"""A transport given several brokers fails over: two real Mosquitto processes, the first killed."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable

import pytest

from koala_async.core.backoff import Backoff
from koala_async.errors import BrokerUnavailable, ConfigError
from koala_async.io.broker import free_port
from koala_async.io.transport import BrokerAddress, Incoming, MqttTransport, parse_brokers

FAST = Backoff(initial=0.1, cap=0.4)
StartMosquitto = Callable[[], tuple[str, subprocess.Popen]]

pytestmark = pytest.mark.timeout(60)


async def next_message(transport: MqttTransport, timeout: float = 10.0) -> Incoming:
    async with asyncio.timeout(timeout):
        return await anext(transport.messages())


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


def test_parse_brokers_takes_a_list_or_a_comma_separated_string() -> None:
    a, b = parse_brokers("mqtt://gw1:1883, mqtts://gw2", ca_file="/ca.pem")
    assert (str(a), str(b)) == ("mqtt://gw1:1883", "mqtts://gw2:8883")
    assert b.tls and b.ca_file == "/ca.pem"
    assert parse_brokers(["mqtt://u:p@x:1", "y:2"]) == (
        BrokerAddress("x", 1, "u", "p"), BrokerAddress("y", 2))
    # credentials given beside the list override the URLs', for every broker
    assert {(x.username, x.password) for x in parse_brokers("mqtt://u:p@x:1,y:2", username="n", password="s")} \
        == {("n", "s")}
    assert parse_brokers("mqtt://only:1") == (BrokerAddress("only", 1),)


@pytest.mark.parametrize(("value", "message"), [
    ([], "no broker URL"),
    ("mqtt://a:1,,mqtt://b:2", "broker entry 2 of 3"),
    (["mqtt://a:1", 7], "broker entry 2 of 2: expected a non-empty URL, got 7"),
    ("mqtt://a:1, mqtt://a:1", "entry 2 .*already in the list"),
    ("mqtt://a:1, http://b:2", "'http://b:2': scheme"),
    (1883, "expected a URL or a list of URLs"),
])
def test_parse_brokers_names_the_bad_entry(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_brokers(value)  # type: ignore[arg-type]


async def test_moves_to_the_next_broker_resubscribes_and_republishes(mosquitto_factory: StartMosquitto) -> None:
    (url_a, proc_a), (url_b, _) = mosquitto_factory(), mosquitto_factory()
    first, second = parse_brokers([url_a, url_b])
    links: list[tuple[bool, str]] = []

    async def on_connect(t: MqttTransport) -> None:
        await t.publish("presence/node", f"on {t.address}".encode(), retain=True)

    async with MqttTransport((first, second), "node", subscriptions=(("t/#", 1),), on_connect=on_connect,
                         backoff=FAST, on_link=lambda up, detail: links.append((up, detail))) as t:
        await t.wait_connected(10)
        assert (t.stats.broker, t.stats.failovers, t.address) == (url_a, 0, first)
        proc_a.kill()  # the broker crashes: no DISCONNECT, the socket just closes
        await until(lambda: t.stats.broker == url_b and t.connected.is_set(), 15, "the move to broker B")
        assert (t.stats.failovers, t.stats.disconnects, t.stats.connects, t.address) == (1, 1, 2, second)
        assert [up for up, _ in links] == [True, False, True] and links[-1] == (True, url_b)

        async with MqttTransport(second, "observer", subscriptions=(("presence/#", 1),), backoff=FAST) as obs:
            await obs.wait_connected(10)
            # on_connect ran again on B: the retained presence is there, and names B
            presence = await next_message(obs)
            assert (presence.payload, presence.retain) == (f"on {url_b}".encode(), True)
            # the subscription was made again on B: what is published there now reaches the node
            await obs.publish("t/after", b"after")
            msg = await next_message(t)
            assert (msg.topic, msg.payload) == ("t/after", b"after")
            await t.publish("presence/ping", b"from the node")
            assert (await next_message(obs)).payload == b"from the node"


async def test_starts_on_the_second_broker_when_the_first_is_down(mosquitto_factory: StartMosquitto) -> None:
    url_b, _ = mosquitto_factory()
    dead = f"mqtt://127.0.0.1:{free_port()}"
    async with MqttTransport(parse_brokers([dead, url_b]), "late", backoff=FAST) as t:
        await t.wait_connected(10)
        # reaching the second broker first is not a failover: the transport was never on the first
        assert (t.stats.broker, t.stats.failovers, t.stats.connects) == (url_b, 0, 1)


async def test_no_broker_reachable_names_every_address_tried() -> None:
    dead = [f"mqtt://127.0.0.1:{free_port()}" for _ in range(3)]
    async with MqttTransport(parse_brokers(dead), "lonely", backoff=FAST) as t:
        with pytest.raises(BrokerUnavailable) as info:
            await t.wait_connected(timeout=2.0)
    error = info.value
    assert error.address == ", ".join(dead)
    for url in dead:  # each was tried, and its own failure is quoted
        assert f"{url}: " in error.cause
    assert t.stats.connects == 0 and t.stats.broker == ""


def test_a_transport_needs_at_least_one_broker() -> None:
    with pytest.raises(ConfigError, match="no broker address"):
        MqttTransport((), "nobody")


async def test_a_publish_in_flight_when_the_link_drops_is_retried_on_the_next_broker_at_once(
        mosquitto_factory: StartMosquitto) -> None:
    """aiomqtt never fails a publish whose link dropped before the PUBACK: without the transport's
    help it waited out the whole 10 s acknowledgement timeout before trying again on the new broker."""
    from koala_async.tools.linkproxy import LinkProxy

    (url_a, _), (url_b, _) = mosquitto_factory(), mosquitto_factory()
    async with LinkProxy(BrokerAddress.parse(url_a).port, delay=0.5) as slow_link, \
            MqttTransport(BrokerAddress.parse(url_b), "watcher", subscriptions=(("f/#", 1),), backoff=FAST) as watcher:
        await watcher.wait_connected(10)
        async with MqttTransport(parse_brokers([slow_link.url, url_b]), "node", backoff=FAST) as t:
            await t.wait_connected(10)
            publish = asyncio.create_task(t.publish("f/x", b"in flight", timeout=8))
            await asyncio.sleep(0.3)  # sent; its PUBACK is at least 0.7 s away
            started = asyncio.get_running_loop().time()
            slow_link.cut()
            await publish
            took = asyncio.get_running_loop().time() - started
            assert t.stats.broker == url_b and t.stats.publish_retries >= 1
            assert took < 3, f"the publish was retried {took:.1f}s after the link dropped"
        assert (await next_message(watcher)).payload == b"in flight"
