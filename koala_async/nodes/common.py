"""Pieces both node kinds share: sequence numbers, status messages, thread setup, the broker address."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

from koala_async.core.envelope import Status, encode
from koala_async.io.transport import BrokerAddress


class SeqCounter:
    """Per-sender message sequence numbers, monotonic across restarts of the same node.

    Starting from the wall clock in milliseconds means a restarted node (without saved state) still
    numbers above everything it sent before, so the server's dedupe never mistakes new for old.
    """

    def __init__(self, start: int | None = None) -> None:
        self.value = int(time.time() * 1000) if start is None else start
        self._lock = threading.Lock()  # the event loop and a worker thread may both number messages

    def next(self) -> int:
        with self._lock:
            self.value += 1
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


def broker_address(url: str, *, username: str | None = None, password: str | None = None,
                   ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                   tls_insecure: bool = False) -> BrokerAddress:
    """A node's broker address from its config: credentials and TLS options override the URL's."""
    address = BrokerAddress.parse(url, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                                  tls_insecure=tls_insecure)
    if username:
        address = replace(address, username=username, password=password)
    return address
