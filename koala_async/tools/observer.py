"""What the scenario runner sees of a federation: the retained status topics, as a time series.

The :class:`Observer` is fed every status message (server and clients) and keeps the latest of each,
the server's timeline of versions, and a fixed-cadence grid of the server's latest accuracy: every
mode is read at the same instants, however often it publishes (time to target is read from it).
"""

from __future__ import annotations

import math
import time
from typing import Any

from koala_async.core.envelope import Limits, Status, decode
from koala_async.core.topics import Topics
from koala_async.errors import MessageError
from koala_async.io.transport import MqttTransport


class Observer:
    """Collects what the federation says about itself on its status topics."""

    def __init__(self, topics: Topics, started: float) -> None:
        self.topics = topics
        self.started = started
        self.server: dict[str, Any] = {}
        self.server_online = False
        self.server_status_at = -1.0  # elapsed time of the last server status with counters
        self.clients: dict[str, dict[str, Any]] = {}
        self.client_status_at: dict[str, float] = {}
        self.timeline: list[tuple[float, int, float]] = []  # (t, version, test accuracy): reported
        self.validation_timeline: list[tuple[float, int, float]] = []  # the same on validation: for choices
        self.samples: list[dict[str, Any]] = []  # one per server status: the run's own time series
        self.staleness_max_seen = 0
        self.last_version_change = time.monotonic()
        self.malformed = 0
        # [seconds, version, accuracy] of the server's latest report at every multiple of the sampling
        # interval: the same cadence for every mode (time to target is read from it). The accuracy is
        # the validation accuracy where the server has a validation split (targets are choices), else test.
        self.grid: list[tuple[float, int, float | None]] = []

    def sample(self, every: float) -> None:
        """Add the grid points due by now, each holding the latest accuracy the server reported."""
        now = self.elapsed()
        while (len(self.grid) + 1) * every <= now:
            acc = self.server.get("validation_accuracy")
            if not isinstance(acc, float):
                acc = self.server.get("test_accuracy")
            self.grid.append((round((len(self.grid) + 1) * every, 3), int(self.server.get("version", 0)),
                              acc if isinstance(acc, float) and math.isfinite(acc) else None))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def feed(self, topic: str, payload: bytes) -> None:
        try:
            msg = decode(payload, Limits())
        except MessageError:
            self.malformed += 1
            return
        if not isinstance(msg, Status):
            return
        now = round(self.elapsed(), 3)
        if topic == self.topics.server_status:
            self.server_online = msg.online
            if not msg.info:
                return
            version = msg.info.get("version", 0)
            acc = msg.info.get("test_accuracy")
            if version != self.server.get("version"):
                self.last_version_change = time.monotonic()
                if isinstance(acc, float):
                    self.timeline.append((now, version, acc))
                val = msg.info.get("validation_accuracy")
                if isinstance(val, float):
                    self.validation_timeline.append((now, version, val))
            self.server = msg.info
            self.server_status_at = now
            self.staleness_max_seen = max(self.staleness_max_seen, int(msg.info.get("staleness_max", 0)))
            self.samples.append({"t": now, "version": version, "accuracy": acc,
                                 "accepted": msg.info.get("accepted", 0), "online": msg.online,
                                 "accepted_by_client": dict(msg.info.get("accepted_by_client", {}))})
        else:
            cid = self.topics.client_of(topic)
            if cid is not None:
                self.clients[cid] = {**self.clients.get(cid, {}), **msg.info, "online": msg.online,
                                     "state": msg.state}
                self.client_status_at[cid] = now


async def watch(transport: MqttTransport, observer: Observer) -> None:
    async for msg in transport.messages():
        observer.feed(msg.topic, msg.payload)
