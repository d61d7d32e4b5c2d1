"""An in-memory broker and transport: the test double that ships beside the MQTT transport.

``broker = MemoryBroker()`` stands in for Mosquitto inside one event loop; ``broker.factory`` is a
:data:`~koala_async.io.base.TransportFactory`, so ``ServerNode(config, transport=broker.factory)``
runs a node with no sockets at all. It keeps what a federation relies on from a real broker:

- topic filters with ``+`` and ``#`` wildcards;
- retained messages (an empty retained payload clears one), delivered on subscribe;
- last wills, published when a link dies (``broker.drop(client_id)``) but not on a clean exit;
- per-subscriber FIFO delivery through a queue drained by the subscriber's own task, so a publisher
  never runs a subscriber's handler inside its ``publish`` call (as over a real socket);
- a broker outage: ``broker.stop()`` drops every link (wills fire) and refuses connections until
  ``broker.start()``; transports reconnect by themselves, as the MQTT transport does.

QoS is not simulated: delivery to a connected subscriber is exactly once, and what is published to a
subscriber whose link is down is lost (a clean session). ``broker.published`` counts messages per topic.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Self

from koala_async.core.faults import FaultCounter
from koala_async.errors import BrokerUnavailable, TransportError
from koala_async.io.base import Incoming, LinkOptions, TransportStats, topic_matches

log = logging.getLogger(__name__)

RECONNECT_DELAY = 0.05  # seconds between a lost link and the next attempt


class MemoryBroker:
    """A broker inside the event loop (see the module docstring)."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.up = True
        self.retained: dict[str, Incoming] = {}
        self.published: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()  # messages taken and delivered to nobody (lose_next)
        self._links: dict[str, MemoryTransport] = {}
        self._losing: list[list[object]] = []  # [pattern, count left]

    @property
    def url(self) -> str:
        return f"memory://{self.name}"

    def factory(self, options: LinkOptions) -> MemoryTransport:
        """A :data:`~koala_async.io.base.TransportFactory` for nodes on this broker."""
        return MemoryTransport(self, options)

    # -- what transports call ----------------------------------------------------------------

    def _attach(self, link: MemoryTransport) -> None:
        if not self.up:
            raise BrokerUnavailable(self.url, "broker stopped")
        old = self._links.get(link.options.client_id)
        if old is not None and old is not link:  # same client id: MQTT takes the old link down
            self._detach(old, clean=False, reason="session taken over")
        self._links[link.options.client_id] = link
        for topic, message in self.retained.items():
            if link.wants(topic):
                link.deliver(message)

    def _detach(self, link: MemoryTransport, *, clean: bool, reason: str) -> None:
        if self._links.get(link.options.client_id) is not link:
            return
        del self._links[link.options.client_id]
        link.lost(reason)
        will = link.options.will
        if not clean and will is not None:
            self.route(will.topic, will.payload, will.retain)

    def route(self, topic: str, payload: bytes, retain: bool) -> None:
        """Deliver to every matching subscriber; keep (or clear) the retained copy."""
        self.published[topic] += 1
        if retain:
            if payload:
                self.retained[topic] = Incoming(topic, payload, True)
            else:
                self.retained.pop(topic, None)
        for rule in self._losing:
            if rule[1] and topic_matches(str(rule[0]), topic):  # type: ignore[call-overload]
                rule[1] -= 1  # type: ignore[operator]
                self.lost[topic] += 1
                return
        live = Incoming(topic, payload, False)
        for link in list(self._links.values()):
            if link.wants(topic):
                link.deliver(live)

    # -- what tests call ---------------------------------------------------------------------

    def lose_next(self, pattern: str, count: int) -> None:
        """Take the next ``count`` messages on topics matching ``pattern`` and deliver them to nobody,
        as Mosquitto does with QoS 1 messages past a slow subscriber's ``max_queued_messages``."""
        self._losing.append([pattern, count])

    def drop(self, client_id: str) -> None:
        """Cut ``client_id``'s link as a network failure would: its will fires, it reconnects."""
        link = self._links.get(client_id)
        if link is not None:
            self._detach(link, clean=False, reason="link dropped")

    def stop(self) -> None:
        """A broker outage: every link drops (wills are lost with the broker) and none connects."""
        self.up = False
        for link in list(self._links.values()):
            del self._links[link.options.client_id]
            link.lost("broker stopped")
        self.retained.clear()

    def start(self) -> None:
        self.up = True

    def connected_clients(self) -> list[str]:
        return sorted(self._links)


class MemoryTransport:
    """One node's link to a :class:`MemoryBroker` (the :class:`~koala_async.io.base.Transport` contract)."""

    def __init__(self, broker: MemoryBroker, options: LinkOptions) -> None:
        self.broker = broker
        self.options = options
        self.address = broker.url
        self.stats = TransportStats()
        self._faults = FaultCounter(log, f"{options.client_id}: the message handler")
        self.stats.handler_errors_by_class = self._faults.counts
        self.connected = asyncio.Event()
        self._inbox: asyncio.Queue[Incoming | None] = asyncio.Queue()
        self._messages: asyncio.Queue[Incoming] = asyncio.Queue()
        self._lost = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False

    async def __aenter__(self) -> Self:
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._runner = self._tasks.create_task(self._run(), name=f"memory-{self.options.client_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        self.broker._detach(self, clean=True, reason="closed")
        if self._runner is not None:
            self._runner.cancel()
        assert self._tasks is not None
        await self._tasks.__aexit__(None, None, None)

    def wants(self, topic: str) -> bool:
        return any(topic_matches(pattern, topic) for pattern, _ in self.options.subscriptions)

    def deliver(self, message: Incoming) -> None:
        self._inbox.put_nowait(message)

    def lost(self, reason: str) -> None:
        self.stats.last_error = reason
        self._lost.set()
        self._inbox.put_nowait(None)  # wakes the pump

    async def _run(self) -> None:
        while not self._closing:
            try:
                self._lost.clear()
                self.broker._attach(self)
            except BrokerUnavailable as exc:
                self.stats.last_error = exc.cause
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            await self._session()
            await asyncio.sleep(RECONNECT_DELAY)

    async def _session(self) -> None:
        opts = self.options
        self.stats.connects += 1
        self.connected.set()
        if opts.on_link is not None:
            opts.on_link(True, self.address)
        assert self._tasks is not None
        hook = self._tasks.create_task(opts.on_connect(self)) if opts.on_connect is not None else None
        try:
            while True:
                message = await self._inbox.get()
                if message is None:
                    if self._lost.is_set():
                        break
                    continue
                self._take(message)
        finally:
            if hook is not None:
                hook.cancel()
            self.connected.clear()
            self._drain_stale()
        self.stats.disconnects += 1
        if opts.on_link is not None and not self._closing:
            opts.on_link(False, self.stats.last_error)

    def _drain_stale(self) -> None:
        """What was in flight when the link died is lost, as over a socket."""
        while not self._inbox.empty():
            self._inbox.get_nowait()

    def _take(self, message: Incoming) -> None:
        self.stats.messages_in += 1
        self.stats.bytes_in += len(message.payload)
        handler = self.options.handler
        if handler is None:
            self._messages.put_nowait(message)
            return
        try:
            handler(message)
        except Exception as exc:  # noqa: BLE001 - a bug in the consumer must not take the link down with it
            self.stats.handler_errors += 1
            self._faults.record(exc, message.topic)  # counted by class; logged at most every 30 s

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      timeout: float | None = None, expiry: float | None = None) -> None:
        # expiry: nothing waits in this broker (delivery is immediate), so there is nothing to expire
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.connected.wait()
                    await asyncio.sleep(0)  # a publish is never synchronous with its delivery
                    if self.connected.is_set():
                        break
        except TimeoutError:
            raise TransportError(f"publish to {topic} on {self.address} timed out after {timeout}s") from None
        self.broker.route(topic, bytes(payload), retain)
        self.stats.messages_out += 1
        self.stats.bytes_out += len(payload)

    async def messages(self) -> AsyncIterator[Incoming]:
        while True:
            yield await self._messages.get()

    async def wait_connected(self, timeout: float | None = None) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.connected.wait()
        except TimeoutError:
            raise BrokerUnavailable(self.address, self.stats.last_error or "timed out") from None
