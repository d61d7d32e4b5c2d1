"""The server node: a thin async lifecycle around a pure protocol state, a learner and a pacing.

    transport --(message)--> _take: verify, decode --> ServerState.decide --> store.append (journal)
              --> ServerState.accept --> [pending] --> pacing.next_batch --> learner.advance (thread)
              --> checkpoint --> publish learner.retained(version) --> ServerState.published

Everything that decides lives elsewhere: what is admitted and counted in
:class:`~koala_async.core.server_state.ServerState` (pure), what is learned in the mode's
:mod:`learner <koala_async.learning.learner>`, when in its :mod:`pacing <koala_async.nodes.pacing>`,
what survives a crash in :class:`~koala_async.io.checkpoint.ServerStore`. The mode picks learner and
pacing in one place (:mod:`koala_async.nodes.modes`). The node takes any transport
(:mod:`koala_async.io.base`): MQTT by default, the in-memory broker in tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, Self, cast

from koala_async.core.envelope import Limits, Status, decode, encode
from koala_async.core.rejects import RejectCounter
from koala_async.core.server_signing import ServerSigner, next_epoch, server_signer
from koala_async.core.server_state import ServerMetrics, ServerState, Verdict
from koala_async.core.signing import load_keys, unwrap, verify
from koala_async.core.topics import Topics
from koala_async.errors import MessageError
from koala_async.io.base import Incoming, LinkOptions, Transport, TransportFactory, Will
from koala_async.io.checkpoint import ServerStore
from koala_async.io.transport import stop_tasks
from koala_async.nodes.acks import AckSender
from koala_async.nodes.common import SeqCounter, every, limit_threads, node_transport, status_payload
from koala_async.nodes.config import ServerConfig
from koala_async.nodes.events import (
    EventHub,
    EventStream,
    KnowledgeChanged,
    UpdateAccepted,
    UpdateRejected,
    link_listener,
)
from koala_async.nodes.modes import server_parts
from koala_async.nodes.pacing import Batch
from koala_async.nodes.telemetry import server_telemetry

log = logging.getLogger(__name__)


class ServerNode:
    """``async with ServerNode(config) as server: await server.closed()``.

    ``transport`` builds the node's link (:data:`~koala_async.io.base.TransportFactory`); by default
    MQTT to ``config.broker``.
    """

    def __init__(self, config: ServerConfig, transport: TransportFactory | None = None) -> None:
        self.config = config
        self.topics = Topics(config.federation)
        self.limits = Limits(max_payload_bytes=config.max_payload_bytes)
        self._seq = SeqCounter()
        self.pacing, self.learner = server_parts(config, self.topics, self._seq.next)
        self.state = ServerState(self.learner.admit, self.pacing.gate, latency_window=config.latency_window,
                                 rejects=RejectCounter(log))
        self.store = (ServerStore(config.state_dir) if config.state_dir and not config.mode.exchanges_weights
                      else None)
        self.keys: dict[str, bytes] | None = None
        self.acks = AckSender(self.topics, config.node_id, self._seq,
                              flush=self.store.sync if self.store is not None else None)
        self._events = EventHub(config.node_id)
        connect = transport or node_transport(config)
        self._signer: ServerSigner | None = None  # with server_key_file: seals what clients must trust
        self.epoch = 0  # this run of the server (signed into knowledge; see core/server_signing.py)
        will = Will(self.topics.server_status, status_payload(config.node_id, 0, "server", False, "lost", {}))
        self.transport: Transport = connect(LinkOptions(
            f"koala-{config.federation}-{config.node_id}", will=will, clean_session=False,
            subscriptions=((self.topics.all_updates, 1), (self.topics.all_client_status, 1)),
            on_connect=self._on_connect, on_link=link_listener(self._events, config.broker), handler=self._take))
        self.telemetry = server_telemetry(config, self.state, self.transport)  # Prometheus, with metrics_port
        self._payloads: dict[str, bytes] = {}  # topic -> the retained payload describing this version
        self._arrived = asyncio.Event()
        self._stop = threading.Event()  # set on the way out: a running distillation ends at its next step
        self._learning: asyncio.Future[None] | None = None  # the learner's current batch, in its thread
        self._started = time.monotonic()
        self._stack: AsyncExitStack | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = asyncio.Event()

    # -- what callers read ---------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self.state.version

    @property
    def metrics(self) -> ServerMetrics:
        return self.state.metrics

    @property
    def rejects(self) -> RejectCounter:
        return self.state.rejects

    @property
    def test_accuracy(self) -> float:
        return self.learner.test_accuracy

    def snapshot(self) -> dict[str, Any]:
        """The server's counters, as published in its status and written to its report."""
        return {"mode": self.config.mode.value, **self.state.snapshot(time.monotonic()),
                **self.learner.snapshot(), **self.pacing.snapshot(), "uptime": round(time.monotonic() - self._started, 3),
                "acks_dropped": self.acks.dropped, "handler_errors": self.transport.stats.handler_errors,
                "handler_errors_by_class": dict(self.transport.stats.handler_errors_by_class)}

    def events(self, maxsize: int | None = None) -> EventStream:
        """A new bounded stream of this server's events (see :mod:`koala_async.nodes.events`)."""
        return self._events.stream(maxsize)

    @property
    def events_dropped(self) -> int:
        return self._events.dropped

    async def closed(self) -> None:
        await self._closed.wait()

    # -- lifecycle -----------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Load data, build the model, resume from the state directory (blocking; in a thread)."""
        limit_threads(self.config.threads)
        self.learner.prepare()
        self.keys = load_keys(self.config.keys_file) if self.config.keys_file else None
        self._signer = server_signer(self.config)
        meta = self.store.resume(self.state, self.learner, self.limits) if self.store is not None else {}
        self._seq.value = max(self._seq.value, int(meta.get("seq", 0)))
        self.epoch = next_epoch(meta.get("epoch"), int(time.time() * 1000))
        if not self.state.metrics.timeline:
            self.state.metrics.timeline.append((0.0, 0, self.learner.test_accuracy))
        self.pacing.resume(self.state)
        self._retain(self.state.version, full=True)

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self._prepare)
        if self.state.pending:
            self._arrived.set()
        self._stack = AsyncExitStack()
        self._stack.enter_context(self.telemetry)
        await self._stack.enter_async_context(self.transport)
        tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._started = time.monotonic()
        for coro, name in ((self._learn(), "learn"), (every(self.config.status_interval, self._publish_status), "status"),
                           (self.acks.run(self.transport), "acks")):
            self._tasks.append(tasks.create_task(coro, name=f"server-{name}"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            if self.transport.connected.is_set():
                await self.transport.publish(self.topics.server_status, self._status(False, "stopped"),
                                             retain=True, timeout=2)
        except Exception as err:  # noqa: BLE001 - best effort on the way out
            log.debug("final status not sent: %s", err)
        finally:
            assert self._stack is not None
            try:
                # Bounded: a task that swallowed its cancel() would otherwise hold the TaskGroup open forever.
                await stop_tasks(self._tasks, what="server tasks")
            finally:
                await self._stack.aclose()
            if self._learning is not None:
                await asyncio.wait([self._learning])  # the batch in the learner's hands is fused
            if self.store is not None:
                await self._checkpoint(self.state.version)
                self.store.close()
            if self.config.report_path:
                report = {**self.snapshot(), "timeline": self.state.metrics.timeline}
                Path(self.config.report_path).write_text(json.dumps(report, indent=2))
            self._events.close()
            self._closed.set()

    # -- ingest (the transport calls _take as each message is read; it never awaits) --------------

    def _take(self, msg: Incoming) -> None:
        client_id = self.topics.client_of(msg.topic)
        if msg.topic.endswith("/status"):
            self._take_status(msg, client_id)
            return
        try:
            envelope = verify(msg.payload, client_id, self.keys)
            message = decode(envelope, self.limits)
        except MessageError as exc:
            self.state.rejects.error(exc, client_id or msg.topic)
            return
        now_ms = int(time.time() * 1000)
        for answer in self.state.withdraw(message, client_id, now_ms):  # what it supersedes, first
            self._tell(answer)
        verdict = self.state.decide(message, client_id, len(msg.payload), msg.topic, now_ms)
        if verdict is None:
            return
        if verdict.accepted and not verdict.repeat:
            if self.store is not None and self.store.append(envelope):
                # Group commit: one fsync for this burst of arrivals, queued before anything they wake
                # (the ack sender, the learn loop) can run, so no verdict or version precedes it.
                asyncio.get_running_loop().call_soon(self.store.sync)
            self.state.accept(message, envelope if self.store else b"", verdict.staleness, time.monotonic(),
                              now_ms)
            self._arrived.set()
        self._tell(verdict)

    def _take_status(self, msg: Incoming, client_id: str | None) -> None:
        try:
            message = decode(unwrap(msg.payload)[0], self.limits)
        except MessageError as exc:
            self.state.rejects.error(exc, client_id or msg.topic)
            return
        if isinstance(message, Status):
            if self.state.on_status(message, client_id, time.monotonic()):
                self.pacing.on_presence(self.state, message.sender)
                self._arrived.set()
        elif not msg.retain:
            self.state.rejects.reject("wrong_kind", type(message).__name__, msg.topic)

    def _tell(self, verdict: Verdict) -> None:
        """The verdict goes to the client (ack topic) and to local event consumers."""
        if self.config.acks:
            self.acks.offer(verdict.client, verdict.seq, verdict.accepted, verdict.reason, self.state.version,
                            verdict.staleness)
        if self._events.listening and not verdict.repeat:  # build no event nobody reads
            node, v = self.config.node_id, self.state.version
            self._events.emit(UpdateAccepted(node, verdict.client, verdict.seq, v, verdict.staleness)
                              if verdict.accepted else UpdateRejected(node, verdict.client, verdict.seq, v,
                                                                      verdict.reason))

    # -- learning and publishing ---------------------------------------------------------------

    async def _learn(self) -> None:
        idle = self.config.checkpoint_interval if self.store is not None else None
        while True:
            batch = await self.pacing.next_batch(self.state, self._arrived, idle)
            if batch is not None:
                await self._advance(batch)
            elif self.store is not None and self.state.dirty:  # idle, but counters moved: persist them
                await self._checkpoint(self.state.version)

    async def _advance(self, batch: Batch) -> None:
        """Learn from ``batch``, then make the next version durable and publish it."""
        started = time.perf_counter()
        self._learning = asyncio.get_running_loop().run_in_executor(
            None, self.learner.advance, batch.arrivals, self.state.version, batch.steps, self._stop,
            self.state.take_departures())
        # Shielded: the batch has left the pending list, so on the way out the thread must still fuse it
        # (``_stop`` cuts its distillation short) before the final checkpoint, which waits for it.
        await asyncio.shield(self._learning)
        self.state.distilled(time.perf_counter() - started)
        version = self.state.version + 1
        if self.store is not None:
            await self._checkpoint(version)  # durable before anyone can see it
        payloads = await asyncio.to_thread(self._retain, version, False)  # megabytes for a model
        self.state.published(version, batch.arrivals, time.monotonic(), time.monotonic() - self._started,
                             self.learner.test_accuracy)
        for topic, payload in payloads:
            self.state.metrics.knowledge_bytes += len(payload)
            await self.transport.publish(topic, payload, retain=True)
        self._events.emit(KnowledgeChanged(self.config.node_id, version, version - 1))
        self.pacing.published(self.state)
        await self._publish_status()
        log.info("version %d: test accuracy %.3f (%d accepted, %d rejected)", version,
                 self.learner.test_accuracy, self.state.metrics.accepted, self.state.rejects.total)

    async def _checkpoint(self, version: int) -> None:
        assert self.store is not None
        captured = self.store.capture(self.state, version, {"seq": self._seq.value, "epoch": self.epoch,
                                                            "identity": self.learner.identity()})
        await asyncio.to_thread(self.store.write, captured, self.learner)

    def _retain(self, version: int, full: bool) -> list[tuple[str, bytes]]:
        """Encode the messages describing ``version`` and keep them for reconnects (blocking)."""
        seal = self._signer.seal if self._signer is not None else (lambda envelope: envelope)
        encoded = [(topic, seal(encode(replace(cast(Any, message), epoch=self.epoch))))
                   for topic, message in self.learner.retained(version, full)]
        self._payloads.update(encoded)
        return encoded

    async def _on_connect(self, transport: Transport) -> None:
        """(Re)publish retained state: a restarted broker may have lost it. The proxy set's chunks go
        first, encoded one at a time (never all held), so a manifest is never seen before them."""
        for topic, chunk in self.learner.proxy_chunks():
            await transport.publish(topic, encode(chunk), retain=True)
        for topic, payload in list(self._payloads.items()):
            await transport.publish(topic, payload, retain=True)
        await transport.publish(self.topics.server_status, self._status(True, "serving"), retain=True)

    async def _publish_status(self) -> None:
        await self.transport.publish(self.topics.server_status, self._status(True, "serving"), retain=True)

    def _status(self, online: bool, state: str) -> bytes:
        return status_payload(self.config.node_id, self._seq.next(), "server", online, state, self.snapshot())


__all__ = ["ServerConfig", "ServerNode"]
