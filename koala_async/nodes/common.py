"""Pieces both node kinds share: sequence numbers, status messages, thread setup, the broker address."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from koala_async.core.dedupe import next_seq
from koala_async.core.envelope import Status, encode
from koala_async.io.base import TransportFactory
from koala_async.io.transport import mqtt_factory, parse_brokers


class SeqCounter:
    """Per-sender message sequence numbers, monotonic across restarts of the same node.

    Numbers track the wall clock in milliseconds (:func:`~koala_async.core.dedupe.next_seq`), so a
    restarted node (without saved state) still numbers above everything it sent before, and stays
    within the range receivers accept (a window pushed ahead by a forged number is caught up with).
    """

    def __init__(self, start: int | None = None) -> None:
        self.value = int(time.time() * 1000) if start is None else start
        self._lock = threading.Lock()  # the event loop and a worker thread may both number messages

    def next(self) -> int:
        with self._lock:
            self.value = next_seq(self.value, int(time.time() * 1000))
            return self.value


def status_payload(sender: str, seq: int, role: str, online: bool, state: str,
                   info: dict[str, Any]) -> bytes:
    return encode(Status(sender=sender, seq=seq, role=role, online=online, state=state, info=info,
                         sent_at=time.time()))


def limit_threads(threads: int) -> None:
    """Several nodes share a few cores: keep torch from oversubscribing them."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def node_transport(config: Any) -> TransportFactory:
    """The MQTT transport factory of a node config: its broker list (``broker``: one URL, a comma-separated
    string or a list, in failover order), credentials and TLS options overriding the URLs', and the
    protocol (``mqtt_version``: None negotiates 5, else 3.1.1)."""
    addresses = parse_brokers(config.broker, username=config.username, password=config.password,
                              ca_file=config.ca_file, cert_file=config.cert_file, key_file=config.key_file,
                              tls_insecure=config.tls_insecure)
    return mqtt_factory(addresses, mqtt_version=config.mqtt_version)


async def every(seconds: float, action: Callable[[], Awaitable[None]]) -> None:
    """Forever: wait ``seconds``, then await ``action()`` (a node's status heartbeat)."""
    while True:
        await asyncio.sleep(seconds)
        await action()
