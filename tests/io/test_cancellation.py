"""Cancellation is never lost on the way through the transport (the ingest-benchmark shutdown hang).

On Python 3.11, ``asyncio.wait_for`` returns the inner result instead of raising ``CancelledError``
when a ``cancel()`` and the awaited result land in the same event-loop iteration; aiomqtt 2.5 waits
for every PUBACK that way. A server task cancelled just as its ack's PUBACK arrived kept running, and
its TaskGroup (so ``ServerNode`` shutdown) waited for it forever. No broker needed: the PUBACK is
delivered by calling aiomqtt's ``on_publish`` callback directly, deterministically in the same
iteration as the cancel.
"""

from __future__ import annotations

import asyncio

import aiomqtt
import paho.mqtt.client as mqtt
import pytest

from koala_async.io.transport import BrokerAddress, MqttTransport, stop_tasks

pytestmark = pytest.mark.timeout(30)


def _fake_connected(transport: MqttTransport) -> aiomqtt.Client:
    """An aiomqtt client that never touches the network: paho's publish only hands out message ids."""
    client = aiomqtt.Client("127.0.0.1", identifier="fake", timeout=10)
    mids = iter(range(1, 1000))
    client._client.publish = lambda *a, **k: mqtt.MQTTMessageInfo(next(mids))  # type: ignore[method-assign]
    transport._client = client
    transport.connected.set()
    return client


async def test_cancel_arriving_with_the_puback_is_not_swallowed() -> None:
    transport = MqttTransport(BrokerAddress(), "t-cancel")
    client = _fake_connected(transport)
    task = asyncio.create_task(transport.publish("koala/f/clients/c/ack", b"x", qos=1))
    for _ in range(10):  # let it reach the wait for the PUBACK
        await asyncio.sleep(0)
    assert 1 in client._pending_publishes
    client._on_publish(client._client, None, 1, None, None)  # the PUBACK ...
    task.cancel()  # ... and the cancel, in the same iteration
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)  # before the fix: returned normally, the cancel was lost
    assert task.cancelled()


async def test_publish_without_a_puback_times_out_and_retries() -> None:
    transport = MqttTransport(BrokerAddress(), "t-retry")
    _fake_connected(transport)
    import koala_async.io.transport as tr

    old, tr._ACK_TIMEOUT = tr._ACK_TIMEOUT, 0.1
    try:
        with pytest.raises(Exception, match="timed out"):
            await transport.publish("a/b", b"x", qos=1, timeout=1.0)
    finally:
        tr._ACK_TIMEOUT = old
    assert transport.stats.publish_retries >= 2


async def test_stop_tasks_stops_a_task_that_swallowed_its_cancel() -> None:
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.set()  # carries on, like a task whose cancel() a 3.11 wait_for swallowed
        await asyncio.Event().wait()

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await stop_tasks([task], grace=5.0, what="test")
    assert swallowed.is_set() and task.cancelled()
