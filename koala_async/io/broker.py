"""The embedded broker: amqtt started in-process on a loopback port (MQTT 3.1.1).

For one-machine federations and tests. Real deployments use Mosquitto or a clustered broker; see
``nodes/mosquitto.conf``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, Self

from koala_async.errors import TransportError

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class SnapshotSubscriptions(dict[str, list[Any]]):
    """amqtt's table of subscriptions (topic filter -> [(session, qos)]), iterated over a snapshot.

    amqtt 0.12.1 walks ``Broker._subscriptions`` with an ``await`` inside the loop, when a client
    connects (re-sending retained messages) and for every broadcast, while other sessions subscribe
    and unsubscribe. A new filter in between raised "dictionary changed size during iteration" in
    the connecting client's session task: the broker never answered that client's SUBSCRIBE, and the
    client waited out its 10 s acknowledgement timeout before it reconnected (seen at start-up in 1
    and 2 of the 8 clients of two bench runs). Iterating over a copy makes those loops see the
    table as it was when they started, which is all they need.
    """

    def __iter__(self):  # type: ignore[override]
        return iter(list(super().keys()))

    def items(self):  # type: ignore[override]
        return [(topic, list(subscribers)) for topic, subscribers in super().items()]


class EmbeddedBroker:
    """``async with EmbeddedBroker() as broker: broker.url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, shutdown_timeout: float = 5.0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.shutdown_timeout = shutdown_timeout
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        from amqtt.broker import Broker  # imported late: only the broker role needs it

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}",
                                      "max_connections": -1}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = Broker(config)
        self._broker._subscriptions = SnapshotSubscriptions()  # amqtt's iteration race (see the class)
        try:
            await self._broker.start()
        except Exception as exc:
            raise TransportError(f"embedded broker could not listen on {self.host}:{self.port}: {exc}") from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._broker is None:
            return
        broker, self._broker = self._broker, None
        try:
            # amqtt 0.12 can wait forever in shutdown() on a session that is still mid-delivery.
            async with asyncio.timeout(self.shutdown_timeout):
                await broker.shutdown()
        except TimeoutError:
            log.warning("embedded broker on %s:%d did not shut down within %.0fs; closing its listeners",
                        self.host, self.port, self.shutdown_timeout)
            for server in list(broker._servers.values()):
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await server.close_instance()
