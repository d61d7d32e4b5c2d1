"""MQTT transport: one aiomqtt connection kept alive with jittered backoff, as an async context manager.

``MqttTransport`` owns its connection loop inside a TaskGroup. It (re)subscribes and calls ``on_connect``
on every (re)connect (so a node can republish retained state a restarted broker lost), tells an
optional ``on_link(connected, detail)`` callback each time the link comes up or goes down, hands incoming
messages to a bounded queue (a full queue applies backpressure rather than dropping) or, given a
``handler``, straight to that function as they are read, and retries QoS 1 publishes until the broker
acknowledges them. aiomqtt/paho errors become
:class:`~koala_async.errors.TransportError` here and never leak further.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit

import aiomqtt

from koala_async.core.backoff import Backoff
from koala_async.errors import BrokerUnavailable, ConfigError, TransportError
from koala_async.io.base import Incoming, LinkOptions, TransportFactory, TransportStats, Will

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAddress:
    """Where and how to reach a broker: ``mqtt://[user[:pass]@]host[:port]`` or ``mqtts://``."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False

    @classmethod
    def parse(cls, url: str, **extra: object) -> BrokerAddress:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ConfigError(f"broker URL {url!r}: bad port") from None
        return cls(host=parts.hostname or "127.0.0.1", port=port,
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None,
                   tls=tls, **extra)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def explain(self, error: str) -> str:
        """``error`` (a connect failure's text), with what it means for TLS where that is known."""
        if self.tls and "CERTIFICATE_VERIFY_FAILED" in error:
            cas = f"CA file {self.ca_file}" if self.ca_file else "the system's CA certificates (no ca_file set)"
            return f"the broker's TLS certificate could not be verified with {cas}: {error}"
        return error

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the CA certificates: {exc}", source=self.ca_file) from None
        if self.cert_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load the client certificate or its key ({self.key_file}): {exc}",
                                  source=self.cert_file) from None
        if self.tls_insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


# Messages taken from aiomqtt's queue in one go before the pump yields to the event loop.
_DRAIN_SLICE = 256

# How long one publish/subscribe waits for the broker's acknowledgement before it counts as failed.
_ACK_TIMEOUT = 10.0


async def _bounded(call: Awaitable[object], seconds: float, what: str) -> None:
    """Await an aiomqtt call made with ``timeout=math.inf``, bounded here by ``asyncio.timeout``.

    Workaround for a lost cancellation: aiomqtt 2.5 waits for a PUBACK/SUBACK with
    ``asyncio.wait_for(event.wait(), timeout)``, and on Python 3.11 ``wait_for`` *swallows* a
    ``cancel()`` that arrives in the same event-loop iteration as the acknowledgement (it returns the
    result instead of raising ``CancelledError``). The cancelled task then carries on: the server's
    ack sender went back to ``queue.get()`` for good, its TaskGroup waited for it forever and
    ``ServerNode`` shutdown hung (seen in the ingest benchmark, which stops the server while acks are
    still being published). With ``timeout=math.inf`` aiomqtt awaits the event directly, which
    propagates cancellation; ``asyncio.timeout`` (unlike 3.11's ``wait_for``) does not lose it.
    """
    try:
        async with asyncio.timeout(seconds):
            await call
    except TimeoutError:
        raise aiomqtt.MqttError(f"{what}: operation timed out") from None


async def stop_tasks(tasks: list[asyncio.Task[None]], *, grace: float = 10.0, what: str = "tasks") -> None:
    """Cancel ``tasks`` and wait until they are done, cancelling again any that carry on.

    A task can swallow a ``cancel()`` (Python 3.11's ``asyncio.wait_for``, see :func:`_bounded`, is
    one way), and a TaskGroup then waits for it forever. Re-cancelling every half second makes such a
    task stop at its next await. Gives up after ``grace`` seconds (logged) rather than wait forever.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    pending = {t for t in tasks if not t.done()}
    rounds = 0
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
        rounds += 1
        if pending and rounds == 1:
            log.warning("%s still running after cancel(): %s; cancelling again", what,
                        ", ".join(sorted(t.get_name() for t in pending)))
        if pending and loop.time() > deadline:
            log.error("%s did not stop within %.0fs: %s", what, grace,
                      ", ".join(sorted(t.get_name() for t in pending)))
            return


class MqttTransport:
    """A resilient MQTT connection (the :class:`~koala_async.io.base.Transport` contract over aiomqtt).

    ``async with MqttTransport(address, client_id, ...) as t:``; nodes get one from :func:`mqtt_factory`.
    """

    def __init__(self, address: BrokerAddress, client_id: str, *, will: Will | None = None,
                 subscriptions: tuple[tuple[str, int], ...] = (),
                 on_connect: Callable[[MqttTransport], Awaitable[None]] | None = None,
                 clean_session: bool = True, keepalive: int = 30, queue_size: int = 10_000,
                 backoff: Backoff = Backoff(), seed: int | None = None,
                 on_link: Callable[[bool, str], None] | None = None,
                 handler: Callable[[Incoming], None] | None = None) -> None:
        self.address = address
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
        self.backoff = backoff
        self.stats = TransportStats()
        self.connected = asyncio.Event()
        self._queue: asyncio.Queue[Incoming] = asyncio.Queue(queue_size)
        self._wanted: dict[str, bool] = {}  # topic -> matches a subscription (bounded cache)
        self._client: aiomqtt.Client | None = None
        self._rng = random.Random(seed)
        self._tasks: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._hook: asyncio.Task[None] | None = None  # the latest on_connect

    async def __aenter__(self) -> MqttTransport:
        self.address.tls_context()  # a bad CA or certificate file: ConfigError here, not in the retry loop
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
        attempt = 0
        while True:
            try:
                inbox: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
                async with self._make_client(inbox) as client:
                    self._client = client
                    for topic, qos in self.subscriptions:
                        await _bounded(client.subscribe(topic, qos=qos, timeout=math.inf), _ACK_TIMEOUT,
                                       f"subscribe to {topic}")
                    self.stats.connects += 1
                    attempt = 0
                    log.info("%s connected to %s", self.client_id, self.address)
                    self.connected.set()
                    if self.on_link is not None:
                        self.on_link(True, str(self.address))
                    # on_connect publishes (retained state): it runs beside the message pump, so a link
                    # that dies meanwhile is still noticed and on_connect is cancelled with it.
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
            except aiomqtt.MqttError as exc:
                was_connected = self.connected.is_set()
                self.connected.clear()
                self._client = None
                self.stats.last_error = self.address.explain(str(exc))
                delay = self.backoff.delay(attempt, self._rng)
                attempt += 1
                if was_connected:
                    self.stats.disconnects += 1
                    if self.on_link is not None:
                        self.on_link(False, str(exc))
                    log.warning("%s lost the broker at %s (%s); reconnecting in %.1fs",
                                self.client_id, self.address, exc, delay)
                else:
                    err = BrokerUnavailable(str(self.address), self.stats.last_error)
                    log.warning("%s: %s; retrying in %.1fs", self.client_id, err, delay)
                await asyncio.sleep(delay)

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
        except Exception:  # a bug in the consumer must not take the connection down with it
            self.stats.handler_errors += 1
            log.exception("%s: the message handler failed on %s; message dropped", self.client_id,
                          incoming.topic)

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

    def _make_client(self, inbox: asyncio.Queue[aiomqtt.Message]) -> aiomqtt.Client:
        a = self.address
        will = None
        if self.will is not None:
            will = aiomqtt.Will(self.will.topic, self.will.payload, self.will.qos, self.will.retain)
        return aiomqtt.Client(
            a.host, a.port, username=a.username, password=a.password, identifier=self.client_id,
            will=will, clean_session=self.clean_session, keepalive=self.keepalive,
            tls_context=a.tls_context(), timeout=10,
            # aiomqtt builds its incoming queue from this (a documented parameter): hand it ours
            queue_type=cast("type[asyncio.Queue[aiomqtt.Message]]", lambda maxsize=0: inbox))

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      timeout: float | None = None) -> None:
        """Publish, waiting for a connection and retrying until the broker acknowledges (QoS >= 1).

        With ``timeout`` a publish that cannot complete in time raises ``TransportError``.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.connected.wait()
                    client = self._client
                    if client is None:
                        await asyncio.sleep(0.05)
                        continue
                    try:
                        await _bounded(client.publish(topic, payload, qos=qos, retain=retain, timeout=math.inf),
                                       _ACK_TIMEOUT, f"publish to {topic}")
                    except aiomqtt.MqttError as exc:
                        self.stats.publish_retries += 1
                        self.stats.last_error = self.address.explain(str(exc))
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
        try:
            async with asyncio.timeout(timeout):
                await self.connected.wait()
        except TimeoutError:
            raise BrokerUnavailable(str(self.address), self.stats.last_error or "timed out") from None


def mqtt_factory(address: BrokerAddress) -> TransportFactory:
    """A :data:`~koala_async.io.base.TransportFactory` connecting nodes to the broker at ``address``."""
    def factory(options: LinkOptions) -> MqttTransport:
        return MqttTransport(address, options.client_id, will=options.will, subscriptions=options.subscriptions,
                             on_connect=options.on_connect,  # type: ignore[arg-type]
                             on_link=options.on_link, handler=options.handler,
                             clean_session=options.clean_session, keepalive=options.keepalive,
                             seed=options.seed)

    return factory


__all__ = ["BrokerAddress", "Incoming", "MqttTransport", "TransportStats", "Will", "mqtt_factory", "stop_tasks"]
