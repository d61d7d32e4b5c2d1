"""Event streams: one bounded queue per consumer, oldest dropped and counted, ended on close."""

from __future__ import annotations

import asyncio
import gc

import pytest

from koala_async.nodes.events import Connected, ConnectionLost, EventHub, KnowledgeChanged, link_listener


async def test_each_consumer_gets_every_event_in_order() -> None:
    hub = EventHub("n1")
    a, b = hub.stream(), hub.stream()
    for v in range(5):
        hub.emit(KnowledgeChanged("n1", v, v - 1 if v else None))
    hub.close()
    got_a = [e.version async for e in a]  # type: ignore[attr-defined]
    got_b = [e.version async for e in b]  # type: ignore[attr-defined]
    assert got_a == got_b == [0, 1, 2, 3, 4]
    assert hub.dropped == 0


async def test_a_slow_consumer_loses_its_oldest_events_and_they_are_counted() -> None:
    hub = EventHub("n1", maxsize=3)
    slow, fast = hub.stream(), hub.stream(maxsize=100)
    for v in range(10):
        hub.emit(KnowledgeChanged("n1", v, None))
    hub.close()
    assert [e.version async for e in slow] == [7, 8, 9]  # type: ignore[attr-defined]
    assert len([e async for e in fast]) == 10
    assert slow.dropped == 7 and hub.dropped == 7


async def test_a_waiting_consumer_wakes_and_ends_on_close() -> None:
    hub = EventHub("n1")
    stream = hub.stream()
    got: list[object] = []

    async def consume() -> None:
        async for event in stream:
            got.append(event)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    hub.emit(Connected("n1", "mqtt://x:1", reconnect=False))
    await asyncio.sleep(0.01)
    assert len(got) == 1 and not task.done()
    hub.close()
    async with asyncio.timeout(2):
        await task
    late = hub.stream()  # a stream asked for after the node ended is already over
    assert [e async for e in late] == []


def test_abandoned_streams_are_forgotten() -> None:
    hub = EventHub("n1")
    hub.stream()
    gc.collect()
    hub.emit(KnowledgeChanged("n1", 1, None))
    assert hub.dropped == 0 and len(hub._streams) == 0


def test_link_listener_marks_reconnects() -> None:
    hub = EventHub("n1")
    stream = hub.stream()
    on_link = link_listener(hub, "mqtt://b:1")
    on_link(True, "mqtt://b:1")
    on_link(False, "broken pipe")
    on_link(True, "mqtt://b:1")
    events = list(stream._queue)
    assert [type(e) for e in events] == [Connected, ConnectionLost, Connected]
    assert [getattr(e, "reconnect", None) for e in events] == [False, None, True]
    assert events[1].error == "broken pipe"  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        EventHub("n1", maxsize=0)
