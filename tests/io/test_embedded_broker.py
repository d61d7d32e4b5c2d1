"""The embedded amqtt broker under a burst of connecting clients (the start of every federation)."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from koala_async.io.broker import EmbeddedBroker, SnapshotSubscriptions, free_port

pytestmark = pytest.mark.timeout(60)


def test_snapshot_subscriptions_iterate_while_the_table_changes() -> None:
    table = SnapshotSubscriptions({"a": [("s1", 0)], "b": []})
    for topic in table:  # a plain dict raises "dictionary changed size during iteration"
        table[topic + "/new"] = []
    for topic, subscribers in table.items():
        subscribers.append(("s2", 1))  # a copy: the table's own lists are untouched
        table.pop(topic)
    assert table == {}


async def _join(port: int, n: int) -> None:
    """Connect and subscribe to a filter of its own plus the shared one; raises without a SUBACK."""
    await asyncio.sleep(0.002 * n)  # in waves, as processes come up: some connect while others subscribe
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"burst-{n}") as client:
        await client.subscribe([(f"burst/{n}/ack", 1), ("burst/shared", 1)], timeout=5)


async def test_a_burst_of_clients_all_get_their_suback() -> None:
    # 60 clients connecting together: each new session walks the subscription table while the others
    # add filters. With amqtt's plain dict, some sessions died on "dictionary changed size during
    # iteration" and their SUBSCRIBE was never answered (the client waited out its timeout).
    async with (EmbeddedBroker(port=free_port()) as broker,
                aiomqtt.Client("127.0.0.1", broker.port, identifier="publisher") as pub):
        for _ in range(5):
            await pub.publish("burst/shared", b"retained", qos=1, retain=True)
        results = await asyncio.gather(*(_join(broker.port, n) for n in range(60)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, f"{len(failed)} of 60 subscribes failed: {failed[:3]}"
