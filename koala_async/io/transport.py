"""MQTT transport: one aiomqtt connection kept alive with jittered backoff, as an async context manager.

``Transport`` owns its connection loop inside a TaskGroup. Given several broker addresses it fails
over: when the broker it is on goes away (or cannot be reached) it moves to the next one in the list,
round robin, each try after a jittered backoff that grows with every full round of failures, so a
dead broker is tried once a round and never hammered. It speaks MQTT 5 where the broker offers it and
3.1.1 where not (:mod:`koala_async.io.negotiate`), remembering per address which one works. It
(re)subscribes and calls ``on_connect`` on every (re)connect (so a node can republish retained state a
restarted or different broker lacks), tells an optional ``on_link(connected, detail)`` callback each
time the link comes up or goes down, hands incoming messages to a bounded queue (a full queue applies
backpressure rather than dropping) or, given a ``handler``, straight to that function as they are
read, and retries QoS 1 publishes until the broker acknowledges them. aiomqtt/paho errors become
:class:`~koala_async.errors.TransportError` here and never leak further.

**A new client id after a failover.** On a broker other than the one it was last connected to, the
transport connects as ``<client_id>~<n>`` (``n`` counting failovers; ``~`` is never part of a node id).
In a RabbitMQ cluster a subscriber's queue is named after its client id and lives on the node where it
was declared; once that node dies, the same id cannot subscribe on any other node ("home node ... of
durable queue ... is down", measured for clean and persistent sessions alike, for over a minute), while
a new id subscribes at once. A persistent session is lost with that node anyway, so the id moves on
with it; on independent brokers (a Mosquitto failover pair) a new id costs nothing. Reconnecting to
the same broker keeps the id, so a persistent session there resumes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, Self, cast

import aiomqtt

from koala_async.core.backoff import Backoff
from koala_async.core.faults import FaultCounter
from koala_async.errors import BrokerUnavailable, ConfigError, TransportError
from koala_async.io.address import BrokerAddress, parse_brokers
from koala_async.io.base import Incoming, LinkOptions, TransportFactory, TransportStats, Will
from koala_async.io.negotiate import (
    MQTT_5,
    MQTT_311,
    VERSION_NAMES,
    client_options,
    close_socket,
    fail_fast_before_connack,
    probe_window,
    publish_properties,
    refused_version,
)
from koala_async.io.tasks import bounded, stop_tasks

__all__ = ["BrokerAddress", "Incoming", "MqttTransport", "TransportStats", "Will", "mqtt_factory", "parse_brokers",
           "stop_tasks"]

log = logging.getLogger(__name__)


# Messages taken from aiomqtt's queue in one go before the pump yields to the event loop.
_DRAIN_SLICE = 256

# How long one publish/subscribe waits for the broker's acknowledgement before it counts as failed.
_ACK_TIMEOUT = 10.0
# How long a connect waits for the CONNACK (a first MQTT 5 try: see negotiate.probe_window).
_CONNECT_TIMEOUT = 10.0


class MqttTransport:
    """A resilient MQTT connection to one broker out of ``address`` (one or several, in failover order).

    Use ``async with MqttTransport(...) as t:`` (the :class:`~koala_async.io.base.Transport` contract over
    aiomqtt); nodes get one from :func:`mqtt_factory`. ``mqtt_version`` None negotiates (5, else 3.1.1); 5 or 4
    (3.1.1) insists. ``session_expiry`` (seconds) is how long an MQTT 5 broker keeps a persistent
    session (``clean_session=False``) after a disconnect; 3.1.1 keeps one until it is resumed.
    """

    def __init__(self, address: BrokerAddress | Sequence[BrokerAddress], client_id: str, *,
                 will: Will | None = None, subscriptions: tuple[tuple[str, int], ...] = (),
                 on_connect: Callable[[MqttTransport], Coroutine[Any, Any, None]] | None = None,
                 clean_session: bool = True, keepalive: int = 30, queue_size: int = 10_000,
                 backoff: Backoff | None = None, seed: int | None = None,
                 on_link: Callable[[bool, str], None] | None = None,
                 handler: Callable[[Incoming], None] | None = None,
                 mqtt_version: int | None = None, session_expiry: int = 86_400) -> None:
        self.addresses = (address,) if isinstance(address, BrokerAddress) else tuple(address)
        if not self.addresses:
            raise ConfigError(f"transport {client_id}: no broker address given")
        if mqtt_version not in (None, MQTT_5, MQTT_311):
            raise ConfigError(f"transport {client_id}: mqtt_version must be 5, 4 (3.1.1) or None, "
                              f"not {mqtt_version!r}")
        if not 0 <= session_expiry <= 0xFFFFFFFF:
            raise ConfigError(f"transport {client_id}: session_expiry {session_expiry} is out of range")
        self.client_id = client_id
        self.will = will
        self.subscriptions = subscriptions
        self.on_connect = on_connect
        self.on_link = on_link  # called (synchronously) with (True, address) / (False, error)
        # With a handler, each message is handed to it as it is read, in the transport's task, and
        # never queued: for a consumer that handles a message without awaiting (the server's ingest).
        # It must not block; an exception it raises is logged and counted, and the message dropped.
        self.handler = handler
        self.clean_session = clean_session
        self.keepalive = keepalive
        self.backoff = backoff or Backoff()
        self.mqtt_version = mqtt_version
        self.session_expiry = session_expiry
        self.stats = TransportStats()
        self._faults = FaultCounter(log, f"{client_id}: the message handler")
        self.stats.handler_errors_by_class = self._faults.counts
        self.connected = asyncio.Event()
        self._queue: asyncio.Queue[Incoming] = asyncio.Queue(queue_size)
        self._wanted: dict[str, bool] = {}  # topic -> matches a subscription (bounded cache)
        self._client: aiomqtt.Client | None = None
        self._version = MQTT_311  # the protocol _client speaks
        self._index = 0  # into addresses: the broker in use or being tried
        self._last: BrokerAddress | None = None  # the broker of the last connection made
        self._generation = 0  # failovers so far: the suffix of the client id in use
        self._speaks: dict[BrokerAddress, int] = {}  # the version each broker last connected with
        self._fallback: set[BrokerAddress] = set()  # refused 5, and 3.1.1 not tried there yet
        self._errors: dict[str, str] = {}  # address -> its last error, since the last good connection
        self._rng = random.Random(seed)
        self._tasks: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._hook: asyncio.Task[None] | None = None  # the latest on_connect
        self._inflight: set[asyncio.Timeout] = set()  # ack deadlines of publishes on the current link

    @property
    def address(self) -> BrokerAddress:
        """The broker in use, or the one being tried next while disconnected."""
        return self.addresses[self._index]

    async def __aenter__(self) -> Self:
        for address in self.addresses:  # a bad CA or certificate file: ConfigError here, not in the retry loop
            address.tls_context()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._runner = self._tasks.create_task(self._run(), name=f"mqtt-{self.client_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [t for t in (self._runner, self._hook) if t is not None]
        await stop_tasks(tasks, what=f"transport {self.client_id}")
        assert self._tasks is not None
        await self._tasks.__aexit__(None, None, None)

    async def _run(self) -> None:
        failures = 0  # failed tries since the last good connection
        while True:
            address = self.address
            version = self.mqtt_version or self._speaks.get(address) or \
                (MQTT_311 if address in self._fallback else MQTT_5)
            # asking a broker for 5 for the first time: it may neither answer nor hang up (see negotiate)
            probing = version == MQTT_5 and self.mqtt_version is None and address not in self._speaks
            try:
                await self._connection(address, version, probing)
            except aiomqtt.MqttError as exc:
                was_connected = self.connected.is_set()
                self.connected.clear()
                self._client = None
                self._expire_inflight()
                self.stats.last_error = f"{address}: {address.explain(str(exc))}"
                self._errors[str(address)] = address.explain(str(exc))
                if probing and not was_connected and refused_version(exc, probing=True):
                    log.info("%s: %s refused MQTT 5 (%s); trying 3.1.1", self.client_id, address, exc)
                    self._fallback.add(address)
                    continue  # the broker answered (or stayed silent): ask again at once, in 3.1.1
                if address in self._fallback and not was_connected:
                    # 3.1.1 failed as well, so the refusal was not about the version: ask for 5 next time
                    self._fallback.discard(address)
                if was_connected:
                    failures = 0
                self._index = (self._index + 1) % len(self.addresses)
                # one full round of the list per backoff step: each broker is tried once a round
                delay = self.backoff.delay(failures // len(self.addresses), self._rng)
                failures += 1
                if was_connected:
                    self.stats.disconnects += 1
                    if self.on_link is not None:
                        self.on_link(False, str(exc))
                    log.warning("%s lost the broker at %s (%s); reconnecting to %s in %.1fs",
                                self.client_id, address, exc, self.address, delay)
                else:
                    log.warning("%s: %s; trying %s in %.1fs", self.client_id,
                                BrokerUnavailable(str(address), address.explain(str(exc))), self.address, delay)
                await asyncio.sleep(delay)

    def _expire_inflight(self) -> None:
        """Publishes still waiting for an acknowledgement on a dropped link: stop waiting, retry now."""
        dropped, self._inflight = self._inflight, set()
        now = asyncio.get_running_loop().time()
        for deadline in dropped:
            deadline.reschedule(now)

    async def _connection(self, address: BrokerAddress, version: int, probing: bool) -> None:
        """Connect to ``address``, subscribe, start on_connect and pump messages until the link drops."""
        inbox: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        client = self._make_client(address, version, inbox)
        if probing:
            probe_window(client, cap=_CONNECT_TIMEOUT)
        try:
            async with client:
                self._client, self._version = client, version
                if self.subscriptions:
                    # One SUBSCRIBE for every filter: one round trip, not one each. A broker sends the
                    # retained messages after its SUBACK, so a link that drops while they stream (a
                    # proxy set's chunks: megabytes) is noticed at once by the pump; aiomqtt does not
                    # fail a pending subscribe when the link drops, which would wait out _ACK_TIMEOUT.
                    await bounded(client.subscribe(list(self.subscriptions), timeout=math.inf), _ACK_TIMEOUT,
                                  f"subscribe to {', '.join(t for t, _ in self.subscriptions)[:200]}")
                self._connected_to(address, version)
                # on_connect publishes (retained state): it runs beside the message pump, so a link that
                # dies meanwhile is still noticed and on_connect is cancelled with it.
                hook = None
                if self.on_connect is not None:
                    assert self._tasks is not None
                    hook = self._hook = self._tasks.create_task(self.on_connect(self),
                                                                 name=f"on-connect-{self.client_id}")
                try:
                    await self._pump(client, inbox)
                finally:
                    if hook is not None:
                        hook.cancel()
        finally:
            close_socket(client)  # a connect that timed out leaves it open

    def _connected_to(self, address: BrokerAddress, version: int) -> None:
        stats = self.stats
        if address in self._fallback:
            self._fallback.discard(address)
            log.info("%s: %s speaks MQTT 3.1.1 only; it will not be asked for 5 again", self.client_id, address)
        self._speaks[address] = version
        if stats.broker and stats.broker != str(address):
            stats.failovers += 1
            log.warning("%s failed over from %s to %s (as %s)", self.client_id, stats.broker, address,
                        self.identity(address))
        if self._last is not None and address != self._last:
            self._generation += 1
        self._last = address
        stats.connects += 1
        stats.broker, stats.mqtt_version = str(address), version
        self._errors.clear()
        log.info("%s connected to %s (MQTT %s)", self.client_id, address, VERSION_NAMES[version])
        self.connected.set()
        if self.on_link is not None:
            self.on_link(True, str(address))

    def identity(self, address: BrokerAddress) -> str:
        """The MQTT client id to connect to ``address`` with (see the module docstring)."""
        generation = self._generation + (self._last is not None and address != self._last)
        return self.client_id if generation == 0 else f"{self.client_id}~{generation}"

    def _subscribed(self, topic: aiomqtt.Topic) -> bool:
        """Whether ``topic`` matches one of our filters; cached per topic, as matching costs more
        than the rest of a message's trip through the transport."""
        wanted = self._wanted.get(topic.value)
        if wanted is None:
            wanted = any(topic.matches(pattern) for pattern, _ in self.subscriptions)
            if len(self._wanted) < 100_000:
                self._wanted[topic.value] = wanted
        return wanted

    async def _pump(self, client: aiomqtt.Client, inbox: asyncio.Queue[aiomqtt.Message]) -> None:
        """Move incoming messages to the queue until the connection drops (raises ``MqttError``).

        aiomqtt's iterator costs a task and an ``asyncio.wait`` per message; it is used to wait for
        the next message (and to notice a disconnect), and whatever arrived behind that message is
        taken straight from ``inbox``, aiomqtt's own queue, so a burst costs one wake-up, not one each.
        """
        queue, handler = self._queue, self.handler
        async for message in client.messages:
            incoming = self._incoming(message)
            taken = 1
            while True:
                if incoming is None:
                    pass
                elif handler is not None:
                    self._hand(handler, incoming)
                elif queue.full():
                    await queue.put(incoming)  # backpressure: the consumer is behind
                else:
                    queue.put_nowait(incoming)
                if inbox.empty():
                    break
                if taken % _DRAIN_SLICE == 0:
                    await asyncio.sleep(0)  # a long burst: let the node's other tasks run between slices
                incoming = self._incoming(inbox.get_nowait())
                taken += 1
            self.stats.queue_high_water = max(self.stats.queue_high_water, queue.qsize())
        raise aiomqtt.MqttError("message stream ended")

    def _hand(self, handler: Callable[[Incoming], None], incoming: Incoming) -> None:
        try:
            handler(incoming)
        except Exception as exc:  # noqa: BLE001 - a bug in the consumer must not take the connection down with it
            self.stats.handler_errors += 1
            self._faults.record(exc, incoming.topic)  # counted by class; logged at most every 30 s

    def _incoming(self, message: aiomqtt.Message) -> Incoming | None:
        """``message`` as handed on, or None (counted) when it is on a topic we never asked for."""
        if not self._subscribed(message.topic):
            # amqtt 0.12 replays, to every client that connects, the retained messages of every
            # filter *any* client subscribed to: drop what we never asked for.
            self.stats.unsolicited += 1
            return None
        payload = message.payload
        if not isinstance(payload, (bytes, bytearray)):
            payload = str(payload).encode()
        stats = self.stats
        stats.messages_in += 1
        stats.bytes_in += len(payload)
        return Incoming(message.topic.value, bytes(payload), message.retain)

    def _make_client(self, address: BrokerAddress, version: int,
                     inbox: asyncio.Queue[aiomqtt.Message]) -> aiomqtt.Client:
        will = None
        if self.will is not None:
            will = aiomqtt.Will(self.will.topic, self.will.payload, self.will.qos, self.will.retain)
        client = aiomqtt.Client(
            address.host, address.port, username=address.username, password=address.password,
            identifier=self.identity(address), will=will, keepalive=self.keepalive,
            # aiomqtt's timeout bounds only the wait for the CONNACK here: every other call passes its own
            tls_context=address.tls_context(), timeout=_CONNECT_TIMEOUT,
            # aiomqtt builds its incoming queue from this (a documented parameter): hand it ours
            queue_type=cast("type[asyncio.Queue[aiomqtt.Message]]", lambda maxsize=0: inbox),
            **client_options(version, clean_session=self.clean_session, session_expiry=self.session_expiry))
        fail_fast_before_connack(client)
        return client

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      timeout: float | None = None, expiry: float | None = None) -> None:
        """Publish, waiting for a connection and retrying until the broker acknowledges (QoS >= 1).

        With ``timeout`` a publish that cannot complete in time raises ``TransportError``. With
        ``expiry`` (seconds, rounded up) an MQTT 5 broker discards the message once it has waited that
        long for a subscriber (retained copies included); a 3.1.1 link carries no expiry and ignores it.
        """
        if expiry is not None and not expiry > 0:
            raise ValueError(f"publish to {topic}: expiry must be a positive number of seconds, not {expiry!r}")
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.connected.wait()
                    client = self._client
                    if client is None:
                        await asyncio.sleep(0.05)
                        continue
                    properties = publish_properties(self._version, expiry)
                    try:
                        await bounded(client.publish(topic, payload, qos=qos, retain=retain,
                                                      properties=properties, timeout=math.inf),
                                       _ACK_TIMEOUT, f"publish to {topic}", self._inflight)
                    except aiomqtt.MqttError as exc:
                        self.stats.publish_retries += 1
                        self.stats.last_error = str(exc)
                        if qos == 0:
                            return
                        await asyncio.sleep(0.1 + self._rng.random() * 0.2)
                        continue
                    self.stats.messages_out += 1
                    self.stats.bytes_out += len(payload)
                    return
        except TimeoutError:
            raise TransportError(f"publish to {topic} on {self.address} timed out after {timeout}s") from None

    async def messages(self) -> AsyncIterator[Incoming]:
        """Incoming messages in arrival order (across reconnects)."""
        while True:
            yield await self._queue.get()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait for a connection; :class:`BrokerUnavailable` naming every address tried when none came."""
        try:
            async with asyncio.timeout(timeout):
                await self.connected.wait()
        except TimeoutError:
            raise self.unavailable() from None

    def unavailable(self) -> BrokerUnavailable:
        """The error to raise when no broker answers: every address, and what each last said."""
        where = ", ".join(str(a) for a in self.addresses)
        if len(self.addresses) == 1:
            return BrokerUnavailable(where, self._errors.get(where) or "timed out")
        cause = "; ".join(f"{addr}: {err}" for addr, err in self._errors.items()) or "timed out"
        return BrokerUnavailable(where, cause)


def mqtt_factory(addresses: BrokerAddress | tuple[BrokerAddress, ...], *, mqtt_version: int | None = None,
                 session_expiry: int = 86_400) -> TransportFactory:
    """A :data:`~koala_async.io.base.TransportFactory` connecting nodes to the broker(s) at ``addresses``
    (failover order); ``mqtt_version`` 4 skips the MQTT 5 attempt (brokers known to speak 3.1.1 only)."""
    def factory(options: LinkOptions) -> MqttTransport:
        return MqttTransport(addresses, options.client_id, will=options.will, subscriptions=options.subscriptions,
                             on_connect=options.on_connect,  # type: ignore[arg-type]
                             on_link=options.on_link, handler=options.handler,
                             clean_session=options.clean_session, keepalive=options.keepalive,
                             seed=options.seed, mqtt_version=mqtt_version, session_expiry=session_expiry)

    return factory
