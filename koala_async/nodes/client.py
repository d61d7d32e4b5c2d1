"""The client node: a thin lifecycle around a local training task and its readiness.

It trains on private data when ready and publishes what its task produces (KOALA: float16 logits on
proxy samples; FedAvg: weights); it never sends data and never waits for other clients. The mode's
part is the task (:mod:`koala_async.nodes.local_training`, chosen in :mod:`koala_async.nodes.modes`);
when to train is :mod:`koala_async.nodes.readiness`; the private samples are
:mod:`koala_async.nodes.client_inputs`.

Embedded in a gateway's own asyncio program, it runs in the caller's loop (training in a worker
thread), takes private samples as they come (:meth:`ClientNode.add_samples`, bounded by
``max_samples`` under a ``retention`` policy), may start with no data at all (``dataset = "none"``:
it trains once it holds ``min_samples``), and reports what happens through :meth:`ClientNode.events`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any, Self, cast

from koala_async.core.envelope import Ack, Limits
from koala_async.core.faults import FaultCounter
from koala_async.core.knowledge_gate import KnowledgeGate
from koala_async.core.rejects import RejectCounter
from koala_async.core.retention import AddResult
from koala_async.core.server_signing import parse_public_key
from koala_async.core.topics import Topics
from koala_async.io.base import Incoming, LinkOptions, Transport, TransportFactory, Will
from koala_async.nodes.client_inputs import ClientInputs
from koala_async.nodes.client_state import ClientState
from koala_async.nodes.common import SeqCounter, limit_threads, node_transport, status_payload
from koala_async.nodes.config import ClientConfig, TrainSettings
from koala_async.nodes.events import (
    EventHub,
    EventStream,
    KnowledgeChanged,
    TierChanged,
    Trained,
    link_listener,
)
from koala_async.nodes.local_training import task_summary
from koala_async.nodes.modes import client_task
from koala_async.nodes.outbox import Outbox
from koala_async.nodes.proxy_sync import FetchLink
from koala_async.nodes.readiness import Readiness
from koala_async.nodes.telemetry import client_telemetry
from koala_async.nodes.workers import Workers

log = logging.getLogger(__name__)


class ClientNode:
    """``async with ClientNode(config) as client: await client.done()``.

    Everything runs in the caller's event loop; cancelling the task inside ``async with`` unwinds the
    node completely (its tasks, and any training thread, which stops after its current minibatch).
    ``transport`` builds the link (:data:`~koala_async.io.base.TransportFactory`; default MQTT).
    """

    def __init__(self, config: ClientConfig, transport: TransportFactory | None = None) -> None:
        self.config = config
        self.topics = Topics(config.federation)
        self.limits = Limits(max_payload_bytes=config.max_payload_bytes)
        self.rejects = RejectCounter(log)
        self.faults = FaultCounter(log, f"{config.node_id}: the receive loop")
        self.task = client_task(config, self.topics)
        self.inputs = ClientInputs(config)
        self.samples = self.inputs.buffer  # the private samples held (bounded; see add_samples)
        self._workers = Workers()  # training and probing threads, joined on exit
        self.readiness = Readiness(config, self.task, self.samples, self._workers)
        self.state = "starting"
        self.bytes_down = 0
        self._events = EventHub(config.node_id, config.event_queue)
        self._initial: Any = None  # data loaded by _prepare
        store = ClientState(config.state_dir) if config.state_dir else None
        self._seq = SeqCounter(max(SeqCounter().value, store.last_seq() if store else 0))
        self.outbox = Outbox(config.node_id, self.topics.update(config.node_id), self._events, store,
                             config.signing_key, config.ack_timeout, config.await_verdicts)
        self._done = asyncio.Event()
        self._stack: AsyncExitStack | None = None
        self._tasks: list[asyncio.Task[None]] = []
        connect = self._connect = transport or node_transport(config)
        keys = (parse_public_key(config.server_public_key, source="server_public_key"),) \
            if config.server_public_key else ()
        # Everything from the server's topics passes the gate: signature, sender, no going back in version.
        self.gate = KnowledgeGate(config.server_id, keys, context=config.federation, limits=self.limits)
        will = Will(self.topics.client_status(config.node_id),
                    status_payload(config.node_id, 0, "client", False, "lost", {}))
        self.transport: Transport = connect(LinkOptions(
            f"koala-{config.federation}-{config.node_id}", will=will, on_connect=self._on_connect,
            subscriptions=tuple((t, 1) for t in (*self.task.subscriptions(), self.topics.ack(config.node_id))),
            seed=hash(config.node_id) & 0xFFFF, keepalive=config.keepalive,
            on_link=link_listener(self._events, config.broker)))
        self.telemetry = client_telemetry(config, self._events, self.transport, self.outbox.ledger)

    # -- what callers use ----------------------------------------------------------------------

    @property
    def updates_sent(self) -> int:
        return self.outbox.sent

    @property
    def updates_accepted(self) -> int:
        return self.outbox.accepted

    @property
    def updates_rejected(self) -> Counter[str]:
        return self.outbox.rejected

    @property
    def knowledge(self) -> Any:
        return self.task.knowledge

    @property
    def proxy(self) -> Any:
        return self.task.proxy

    @property
    def trainer(self) -> Any:
        return self.task.trainer

    @property
    def tier(self) -> str | None:
        return self.task.tier

    def add_samples(self, x: Any, y: Any) -> AddResult:
        """Add private samples ``x`` (n, *input_shape) with integer labels ``y`` (n,) from the event loop's
        thread. Memory stays bounded by ``max_samples`` under the ``retention`` policy; new data makes the
        client ready. Bad input raises :class:`~koala_async.errors.DataError` and changes nothing."""
        return self.inputs.add(x, y)

    def events(self, maxsize: int | None = None) -> EventStream:
        """A new bounded stream of this client's events (see :mod:`koala_async.nodes.events`)."""
        return self._events.stream(maxsize)

    @property
    def events_dropped(self) -> int:
        return self._events.dropped

    async def done(self) -> None:
        """Returns once ``max_updates`` updates have been published and the last has its verdict (or
        ``3 * ack_timeout`` passed without one); never when ``max_updates`` is 0."""
        await self._done.wait()

    # -- lifecycle -----------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Thread setup, the first probe and the configured data (blocking; in a thread)."""
        limit_threads(self.config.threads)
        self.readiness.probe()
        self._initial = self.inputs.load_initial()

    async def __aenter__(self) -> Self:
        try:
            await self._workers.run(self._prepare)
        except BaseException:
            await self._workers.join()
            raise
        self.inputs.start(self._initial)
        self._initial = None
        self.task.holdout = self.inputs.holdout
        self._stack = AsyncExitStack()
        self._stack.enter_context(self.telemetry)
        await self._stack.enter_async_context(self.transport)
        tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        fetch = FetchLink(self._connect, f"koala-{self.config.federation}-{self.config.node_id}-proxy",
                          self.config.keepalive)
        for coro, name in ((self._receive(), "receive"), (self._contribute(), "train"),
                           (self.outbox.run(self.transport), "outbox"),
                           (self.task.background(fetch, self.gate, self.rejects, self.inputs), "proxy")):
            self._tasks.append(tasks.create_task(coro, name=f"{self.config.node_id}-{name}"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        self._workers.stop.set()
        try:
            if self.transport.connected.is_set():
                await self.transport.publish(self.topics.client_status(self.config.node_id),
                                             self._status(False, "left"), retain=True, timeout=2)
        except Exception as err:  # noqa: BLE001 - best effort on the way out
            log.debug("final status not sent: %s", err)
        finally:
            assert self._stack is not None
            try:
                await self._stack.aclose()
            finally:
                await self._workers.join()
                self._events.close()

    async def _on_connect(self, transport: Transport) -> None:
        await transport.publish(self.topics.client_status(self.config.node_id), self._status(True, self.state),
                                retain=True)

    # -- receiving -----------------------------------------------------------------------------

    async def _receive(self) -> None:
        # One message that makes handling raise costs that message, never the client: counted by class.
        take = self.faults.guard(self._take, origin=lambda msg: msg.topic)
        async for msg in self.transport.messages():
            take(msg)

    def _take(self, msg: Incoming) -> None:
        self.bytes_down += len(msg.payload)
        kind = "ack" if msg.topic == self.topics.ack(self.config.node_id) else self.task.kinds.get(msg.topic)
        verdict = self.gate.check(msg.payload, kind)
        if not verdict.accepted or verdict.message is None:
            self.rejects.reject(verdict.reason, verdict.detail, msg.topic)
            return
        message = verdict.message
        if isinstance(message, Ack):
            refused = self.outbox.on_ack(message)
            if refused:
                self.rejects.reject(refused, f"seq={message.update_seq}", msg.topic)
            return
        before = self.task.version
        reason = self.task.take(msg.topic, message, self.inputs)
        if reason is not None:
            self.rejects.reject(reason, type(message).__name__, msg.topic)
        elif self.task.version != before and self.task.version is not None:
            self._events.emit(KnowledgeChanged(self.config.node_id, self.task.version, before))

    # -- contributing --------------------------------------------------------------------------

    async def _report(self, state: str) -> None:
        self.state = state
        await self._publish_status()

    async def _contribute(self) -> None:
        cfg = self.config
        await self._report(self.task.waiting)
        await self.task.ready.wait()
        # A pending update published on restart is this client's contribution: the next training
        # waits its interval, as after any other (readiness.next_turn).
        self.readiness.contributed = await self.outbox.resume(self.transport, self.limits, self.task.still_valid,
                                                              lambda: self.task.version is not None,
                                                              self.task.tier or "")
        while cfg.max_updates == 0 or self.outbox.sent < cfg.max_updates:
            self.state = "idle"
            await self.readiness.next_turn(self._report)
            await self._ensure_model()
            await self.readiness.until_ready(self._report)
            previous = self.task.tier
            tier = self.task.retier(self.readiness.resources, self.readiness.samples_per_epoch())
            if tier is not None:
                log.info("%s moves from %s to %s: %s", cfg.node_id, previous, tier, self.task.tier_reason)
                await self._workers.run(self.task.build, self.inputs.spec())
                self._events.emit(TierChanged(cfg.node_id, tier, previous, self.task.tier_reason))
            await self._train_and_publish()
        await self.outbox.settled(3 * cfg.ack_timeout)  # "done" once its updates are judged: two republishes
        await self._report("done")
        self._done.set()

    async def _ensure_model(self) -> None:
        """Hold off until ``min_samples`` are held (an embedded client may start empty), then build."""
        await self.inputs.wait_for(self.config.min_samples, self._report)
        if self.task.trainer is None and self.task.tier is None:
            spec = self.inputs.spec()
            await self._workers.run(self.task.setup, spec, self.readiness.resources,
                                    self.readiness.samples_per_epoch())
            if self.task.tier is not None:
                self._events.emit(TierChanged(self.config.node_id, self.task.tier, None, self.task.tier_reason))

    async def _train_and_publish(self) -> None:
        self.state = "training"
        started = time.perf_counter()
        seen, version = self.samples.seen, self.task.version
        x, y = self.samples.arrays()  # a snapshot: add_samples may go on while the thread trains
        message, cpu = await self._workers.run_timed(self.task.train, x, y, self.samples.label_counts(),
                                                     self._workers.stop)
        self._events.emit(Trained(self.config.node_id, self.task.tier or "", time.perf_counter() - started))
        self.readiness.trained_on = (version, seen)
        await self.readiness.pace(started, self.task.knowledge is not None, cpu)
        self.state = "publishing"
        message = dataclasses.replace(cast(Any, message), seq=self._seq.next(), sent_at=time.time())
        await self.outbox.send(self.transport, message, self.task.tier or "")
        await self._publish_status()

    # -- status --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        from koala_async.io.resources import peak_rss_bytes

        return {
            "mode": self.config.mode.value, **task_summary(self.task),
            "rss_peak_bytes": peak_rss_bytes(), "resources": self.readiness.resources.summary(),
            "n_samples": len(self.samples), "samples_seen": self.samples.seen,
            **self.outbox.snapshot(), "events_dropped": self._events.dropped,
            "bytes_down": self.bytes_down + self.task.bytes_fetched, "rejected": dict(self.rejects.counts),
            "handler_errors": self.faults.total, "handler_errors_by_class": dict(self.faults.counts),
        }

    def _status(self, online: bool, state: str) -> bytes:
        return status_payload(self.config.node_id, self._seq.next(), "client", online, state, self.snapshot())

    async def _publish_status(self) -> None:
        await self.transport.publish(self.topics.client_status(self.config.node_id),
                                     self._status(True, self.state), retain=True)


__all__ = ["ClientConfig", "ClientNode", "TrainSettings"]
