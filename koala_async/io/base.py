"""The transport interface every node talks through, and what a node asks of its link.

A node never builds an MQTT client itself: it is handed a :data:`TransportFactory`, calls it once
with :class:`LinkOptions` (its client id, last will, subscriptions and callbacks), and uses the
:class:`Transport` it gets back as an async context manager. Two implementations ship:

- :class:`koala_async.io.transport.MqttTransport`: aiomqtt over real sockets, jittered reconnect,
  QoS 1 retry (``mqtt_factory(addresses)`` builds the factory);
- :class:`koala_async.io.memory.MemoryTransport`: an in-process broker with MQTT topic wildcards,
  retained messages and last wills, for tests and simulations (``MemoryBroker().factory``), as httpx
  ships ``MockTransport`` beside its real transports.

Contract (both honour it):

- ``__aenter__`` starts connecting in the background and returns at once; ``connected`` is set while
  the link is up. On every (re)connect the subscriptions are (re)made, ``on_link(True, address)`` is
  called, and ``on_connect(transport)`` runs as a task (it republishes retained state a restarted
  broker lost). When the link drops, ``on_link(False, error)`` is called and the will is published by
  the broker; the transport reconnects by itself.
- Incoming messages on subscribed topics go to ``handler`` (synchronously, in arrival order, never
  awaited: a slow handler slows reading) when one is given, else to ``messages()``.
- ``publish`` waits for a connection and, for QoS >= 1, retries until the broker acknowledges;
  with ``timeout`` it raises :class:`~koala_async.errors.TransportError` when it cannot finish;
  ``expiry`` (seconds) asks the broker to drop the message once it has waited that long for a
  subscriber (MQTT 5; a transport or link without expiry ignores it). Never set on retained messages.
- ``__aexit__`` disconnects cleanly: no last will.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, Self


class Incoming(NamedTuple):
    """One message as a transport hands it on (a tuple: made once per message on the ingest path)."""

    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True)
class Will:
    """The message the broker publishes for a node whose link dies without a clean disconnect."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass
class TransportStats:
    connects: int = 0
    disconnects: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0
    publish_retries: int = 0
    queue_high_water: int = 0
    unsolicited: int = 0  # messages on topics we never subscribed to (dropped)
    handler_errors: int = 0  # messages the handler raised on (logged, rate-limited, and dropped)
    handler_errors_by_class: dict[str, int] = field(default_factory=dict)  # by exception class name
    last_error: str = ""
    broker: str = ""  # the address of the broker it is (or was last) connected to
    mqtt_version: int = 0  # that connection's protocol: 5, or 4 for 3.1.1 (0 before the first)
    failovers: int = 0  # connections made to a different broker than the one before
    by_topic_out: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LinkOptions:
    """What a node asks of its link; a :data:`TransportFactory` turns it into a :class:`Transport`."""

    client_id: str
    will: Will | None = None
    subscriptions: tuple[tuple[str, int], ...] = ()
    on_connect: Callable[[Transport], Coroutine[Any, Any, None]] | None = None
    on_link: Callable[[bool, str], None] | None = None  # (True, address) / (False, error)
    handler: Callable[[Incoming], None] | None = None
    clean_session: bool = True
    keepalive: int = 30
    seed: int | None = None  # reconnect jitter


class Transport(Protocol):
    """A node's link to its broker (see the module docstring for the contract)."""

    connected: asyncio.Event
    stats: TransportStats

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      timeout: float | None = None, expiry: float | None = None) -> None: ...

    def messages(self) -> AsyncIterator[Incoming]: ...

    async def wait_connected(self, timeout: float | None = None) -> None: ...


TransportFactory = Callable[[LinkOptions], Transport]


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT filter matching: ``+`` matches one level, a trailing ``#`` any number (also none);
    filters starting with a wildcard never match ``$``-topics (MQTT 3.1.1 section 4.7.2)."""
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    want, have = pattern.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return i == len(want) - 1
        if i >= len(have) or (level != "+" and level != have[i]):
            return False
    return len(want) == len(have)
