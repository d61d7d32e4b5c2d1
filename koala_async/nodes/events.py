"""Node events for programs that embed a node: typed, frozen, delivered to any number of consumers.

``async for event in node.events(): ...`` works on :class:`~koala_async.nodes.client.ClientNode` and
:class:`~koala_async.nodes.server.ServerNode`. Each ``events()`` call gets its own bounded queue
(``EventStream``); a consumer that falls behind loses its *oldest* events, never blocks the node,
and the loss is counted (``stream.dropped``, and ``node.events_dropped`` over all streams). A stream
ends (the ``async for`` finishes) when the node shuts down, after its queued events are delivered.
A stream nobody holds any more is forgotten (weakly referenced), so abandoned iterators cost nothing.
A *tap* (``EventHub.tap(callback)``) is called synchronously with every event, never drops one, and
must return at once: the node's own metrics (:mod:`koala_async.nodes.telemetry`) count through one.
A stream sees what happens after it is asked for: ask before ``async with`` to see the first
``Connected``.

Events (all carry ``node``, the node id, and ``at``, ``time.time()`` when it happened):

- :class:`Connected` (``reconnect`` False the first time) and :class:`ConnectionLost`: the broker link.
- :class:`KnowledgeChanged`: a new server knowledge version (client: received; server: published).
- :class:`TierChanged`: the client chose (``previous`` None) or moved to another model tier.
- :class:`Trained`: the client trained its model once (how long it took).
- :class:`UpdatePublished`: the client's update reached the broker (QoS 1 acknowledged).
- :class:`UpdateAccepted` / :class:`UpdateRejected`: the server's verdict on an update (on the
  client, from its ``clients/<id>/ack`` topic; on the server, for every client's update).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    node: str
    at: float = field(default_factory=time.time, kw_only=True)


@dataclass(frozen=True)
class Connected(Event):
    broker: str
    reconnect: bool


@dataclass(frozen=True)
class ConnectionLost(Event):
    broker: str
    error: str


@dataclass(frozen=True)
class KnowledgeChanged(Event):
    version: int
    previous: int | None


@dataclass(frozen=True)
class TierChanged(Event):
    tier: str
    previous: str | None
    reason: str


@dataclass(frozen=True)
class Trained(Event):
    tier: str
    seconds: float  # wall time of one local training, in its worker thread


@dataclass(frozen=True)
class UpdatePublished(Event):
    seq: int
    base_version: int
    tier: str
    n_samples: int
    bytes: int


@dataclass(frozen=True)
class UpdateAccepted(Event):
    client: str
    seq: int
    version: int  # the server's version when it admitted the update
    staleness: int


@dataclass(frozen=True)
class UpdateRejected(Event):
    client: str
    seq: int
    version: int
    reason: str


class EventStream:
    """One consumer's bounded queue of events; an async iterator. Drops its oldest when full."""

    def __init__(self, maxsize: int) -> None:
        self._queue: deque[Event] = deque()
        self._maxsize = maxsize
        self._wake = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def _put(self, event: Event) -> bool:
        """Queue ``event``; True when the oldest had to be dropped for it."""
        dropped = len(self._queue) >= self._maxsize
        if dropped:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)
        self._wake.set()
        return dropped

    def _close(self) -> None:
        self._closed = True
        self._wake.set()

    def pending(self) -> int:
        return len(self._queue)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        return self._queue.popleft()


class EventHub:
    """Fans events out to every live :class:`EventStream` of one node. Never blocks the emitter."""

    def __init__(self, node: str, maxsize: int = 256) -> None:
        if maxsize < 1:
            raise ValueError("event queue size must be >= 1")
        self.node = node
        self.maxsize = maxsize
        self.dropped = 0
        self.emitted = 0
        self._streams: weakref.WeakSet[EventStream] = weakref.WeakSet()
        self._taps: list[Callable[[Event], None]] = []
        self._closed = False

    def stream(self, maxsize: int | None = None) -> EventStream:
        stream = EventStream(maxsize or self.maxsize)
        if self._closed:
            stream._close()
        else:
            self._streams.add(stream)
        return stream

    def tap(self, callback: Callable[[Event], None]) -> None:
        """Call ``callback(event)`` synchronously for every event from now on (it must not block)."""
        self._taps.append(callback)

    @property
    def listening(self) -> bool:
        """Whether any stream or tap is open: hot paths build an event only when someone will read it."""
        return bool(self._streams) or bool(self._taps)

    def emit(self, event: Event) -> None:
        self.emitted += 1
        for callback in self._taps:
            callback(event)
        for stream in list(self._streams):
            if stream._put(event):
                self.dropped += 1

    def close(self) -> None:
        """End every stream (after it delivers what it holds); later streams end at once."""
        self._closed = True
        for stream in list(self._streams):
            stream._close()
        self._streams = weakref.WeakSet()


def link_listener(hub: EventHub, broker: str | tuple[str, ...]) -> Callable[[bool, str], None]:
    """A ``Transport(on_link=...)`` callback that emits :class:`Connected` / :class:`ConnectionLost`."""
    connects = 0
    broker = broker if isinstance(broker, str) else ",".join(broker)

    def on_link(up: bool, detail: str) -> None:
        nonlocal connects
        if up:
            hub.emit(Connected(hub.node, broker, reconnect=connects > 0))
            connects += 1
        else:
            hub.emit(ConnectionLost(hub.node, broker, detail))

    return on_link
