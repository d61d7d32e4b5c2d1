"""The server node: ingests client logits whenever they arrive, distills the large model, publishes
knowledge. No rounds: each accepted arrival (or buffer of ``buffer_size`` arrivals) triggers a fusion
and a few distillation steps, then a new knowledge version.

Durability (with ``state_dir``): an update is journaled (fsync'd) before it is counted as accepted,
and every new version is checkpointed (model, optimizer, fusion contributions, dedupe window,
counters, not-yet-distilled arrivals) before it is published, so after a power cut the server resumes
at no lower version and accepted count than it ever published. See :mod:`koala_async.io.durable`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from koala_async.core.admission import AdmissionContext, Decision, admit
from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import (
    MODES,
    Knowledge,
    Limits,
    ProxySet,
    Status,
    Update,
    Weights,
    decode,
    encode,
)
from koala_async.core.fusion import Contribution, Fusion, FusionConfig
from koala_async.core.signing import load_keys, unwrap, verify
from koala_async.core.staleness import StalenessPolicy
from koala_async.core.topics import Topics, check_id
from koala_async.core.trust import TierTrust, TrustConfig
from koala_async.errors import ConfigError, MessageError
from koala_async.io.durable import Journal, atomic_write
from koala_async.io.transport import Incoming, Transport, Will, stop_tasks
from koala_async.nodes.acks import AckSender
from koala_async.nodes.common import RejectCounter, SeqCounter, broker_address, limit_threads, status_payload
from koala_async.nodes.events import (
    EventHub,
    EventStream,
    KnowledgeChanged,
    UpdateAccepted,
    UpdateRejected,
    link_listener,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """Everything a server node needs; loadable from the ``[server]`` table of a TOML file."""

    node_id: str = "server"
    broker: str = "mqtt://127.0.0.1:1883"
    federation: str = "default"
    # "async" (KOALA, no rounds: this class), "sync" (KOALA in rounds) or "fedavg": see nodes/modes.py.
    mode: str = "async"
    round_timeout: float = 120.0  # sync and fedavg: seconds a round waits for its selected clients
    round_min_clients: int = 1  # sync and fedavg: fewer deliveries than this are not aggregated
    # Data: a dataset name from which proxy and test splits are derived (as clients derive shards),
    # or explicit .npz files.
    dataset: str = "digits"
    seed: int = 0
    test_fraction: float = 0.2
    proxy_fraction: float = 0.25
    proxy_path: str | None = None
    test_path: str | None = None
    large_model: str | None = None
    temperature: float = 3.0
    lr: float = 1e-3
    batch_size: int = 64
    distill_steps: int = 40  # per arrival fused (up to max(4, buffer_size) arrivals per fusion)
    buffer_size: int = 1
    # Latency budget: a version's distillation stops after this many seconds (None = run all its
    # steps); what arrived meanwhile fuses into the next version, so arrival-to-published latency
    # stays bounded when many clients publish.
    max_distill_seconds: float | None = None
    # Benchmarks: admit and count updates but never fuse, distill or publish new versions.
    ingest_only: bool = False
    # Publish each update's verdict on the client's ack topic (QoS 1). Off saves one message per update
    # on a constrained link; clients then learn of acceptance only from the server's status counters.
    acks: bool = True
    latency_window: float = 30.0  # seconds of fuse latency in the snapshot's "fuse_latency_recent"
    # Distillation-time augmentation of proxy inputs: "shift" moves images by up to a pixel (vector
    # inputs are never augmented); "none" distills on the proxy inputs exactly as they are.
    augment: str = "shift"
    accepted_tiers: tuple[str, ...] = ()
    staleness: StalenessPolicy = field(default_factory=StalenessPolicy)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)  # per-tier trust (docs/heterogeneous.md)
    status_interval: float = 2.0
    max_payload_bytes: int = 8 * 1024 * 1024
    threads: int = 1
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    report_path: str | None = None
    # Durability: checkpoint + journal directory (None = keep state in memory only), and how often an
    # idle server checkpoints its counters (a new version is always checkpointed before publishing).
    state_dir: str | None = None
    checkpoint_interval: float = 30.0
    # Signed updates: a JSON file {client id: key}; when set, unsigned or badly signed updates are refused.
    keys_file: str | None = None

    def __post_init__(self) -> None:
        check_id(self.node_id, "node_id")
        if self.distill_steps < 1 or self.buffer_size < 1:
            raise ValueError("distill_steps and buffer_size must be >= 1")
        if self.max_distill_seconds is not None and self.max_distill_seconds <= 0:
            raise ValueError("max_distill_seconds must be > 0 (or unset)")
        if self.latency_window <= 0:
            raise ValueError("latency_window must be > 0")
        from koala_async.learning.distill import AUGMENTATIONS

        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment {self.augment!r} is not one of {list(AUGMENTATIONS)}")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {list(MODES)}")
        if self.round_timeout <= 0 or self.round_min_clients < 1:
            raise ValueError("round_timeout must be > 0 and round_min_clients >= 1")


@dataclass
class ServerMetrics:
    accepted: int = 0
    staleness_sum: int = 0
    staleness_max: int = 0
    update_bytes: int = 0
    knowledge_bytes: int = 0
    distill_seconds: float = 0.0
    distill_steps_skipped: int = 0  # steps a version's latency budget cut short
    timeline: list[tuple[float, int, float]] = field(default_factory=list)
    accepted_by_client: dict[str, int] = field(default_factory=dict)
    staleness_hist: dict[str, int] = field(default_factory=dict)  # "0".."31", "32+": bounded

    @property
    def staleness_mean(self) -> float:
        return self.staleness_sum / self.accepted if self.accepted else 0.0


class ServerNode:
    """``async with ServerNode(config) as server: await server.closed()``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.topics = Topics(config.federation)
        self.limits = Limits(max_payload_bytes=config.max_payload_bytes)
        self.version = 0
        self.test_accuracy = float("nan")
        self.metrics = ServerMetrics()
        self.rejects = RejectCounter(log)
        self.seen = SeqWindow()
        self.online: dict[str, dict[str, Any]] = {}
        self.tier_trust = TierTrust(config.trust)
        self._seq = SeqCounter()
        self._events = EventHub(config.node_id)
        self.acks = AckSender(self.topics, config.node_id, self._seq)
        # Accepted, not yet fused: (update, envelope, monotonic arrival time).
        self._pending: list[tuple[Update, bytes, float]] = []
        self._in_flight = 0  # taken from _pending, not yet published: still "pending" to observers
        # Seconds from an update's arrival to the publication of the first version that fused it.
        # (published at, seconds from arrival): the whole record and the last ``latency_window`` of it.
        self.fuse_latency: deque[tuple[float, float]] = deque(maxlen=20_000)
        self.keys: dict[str, bytes] | None = None
        self.journal: Journal | None = None
        self._model_lock = threading.Lock()  # the distill thread and checkpoint writes take turns
        # One checkpoint write at a time, newest capture wins: a write cancelled on shutdown may still
        # be running in its thread when the final one starts.
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_from = 0
        self._dirty = False
        self._ctx: AdmissionContext | None = None  # admission's view of the server, per version
        self._arrived = asyncio.Event()
        self._started = time.monotonic()
        self._stack: AsyncExitStack | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = asyncio.Event()

    # -- setup -----------------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Load data and build the large model (blocking; runs in a thread)."""
        from koala_async.learning import data as datasets
        from koala_async.learning.distill import Distiller
        from koala_async.learning.models import build_model, default_large

        limit_threads(self.config.threads)
        cfg = self.config
        if cfg.proxy_path and cfg.test_path:
            test = datasets.load_npz(cfg.test_path)
            proxy = datasets.load_npz(cfg.proxy_path, num_classes=test.spec.num_classes, labeled=False)
        else:
            splits = datasets.split(datasets.load_dataset(cfg.dataset), cfg.seed, cfg.test_fraction,
                                    cfg.proxy_fraction)
            proxy, test = splits.proxy, splits.test
            if cfg.proxy_path:
                proxy = datasets.load_npz(cfg.proxy_path, num_classes=test.spec.num_classes, labeled=False)
            if cfg.test_path:
                test = datasets.load_npz(cfg.test_path)
        if proxy.x.shape[1:] != test.x.shape[1:]:
            raise ValueError(f"proxy inputs {proxy.x.shape[1:]} and test inputs {test.x.shape[1:]} differ")
        self.spec = test.spec
        self.proxy_x = proxy.x.astype(np.float32)
        self.proxy_id = datasets.proxy_id(self.proxy_x)
        self.test = test
        large = cfg.large_model or default_large(self.spec.kind)
        self.large_name = large
        self.distiller = Distiller(build_model(large, self.spec, seed=cfg.seed), lr=cfg.lr,
                                   temperature=cfg.temperature, batch_size=cfg.batch_size, seed=cfg.seed,
                                   augment=cfg.augment)
        self.fusion = Fusion(len(self.proxy_x), self.spec.num_classes, cfg.fusion, cfg.staleness)
        self.knowledge_logits: np.ndarray | None = None
        if cfg.keys_file:
            self.keys = load_keys(cfg.keys_file)
        if cfg.state_dir and (Path(cfg.state_dir) / CHECKPOINT).exists():
            self._restore(Path(cfg.state_dir))
        else:
            self.test_accuracy = self._evaluate()
            self.metrics.timeline.append((0.0, 0, self.test_accuracy))
        if cfg.state_dir:
            self._replay_journal(Path(cfg.state_dir))

    def _evaluate(self) -> float:
        from koala_async.learning.distill import accuracy

        return accuracy(self.distiller.model, self.test.x, self.test.y)

    async def __aenter__(self) -> ServerNode:
        await asyncio.to_thread(self._prepare)
        cfg = self.config
        if self._pending:
            self._arrived.set()
        address = broker_address(cfg.broker, username=cfg.username, password=cfg.password,
                                 ca_file=cfg.ca_file, cert_file=cfg.cert_file, key_file=cfg.key_file,
                                 tls_insecure=cfg.tls_insecure)
        will = Will(self.topics.server_status,
                    status_payload(cfg.node_id, 0, "server", False, "lost", {}))
        self._stack = AsyncExitStack()
        self.transport = await self._stack.enter_async_context(Transport(
            address, f"koala-{cfg.federation}-{cfg.node_id}", will=will, clean_session=False,
            subscriptions=((self.topics.all_updates, 1), (self.topics.all_client_status, 1)),
            on_connect=self._on_connect, on_link=link_listener(self._events, str(address)),
            handler=self._take))
        tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._started = time.monotonic()
        for coro, name in ((self._learn(), "learn"), (self._heartbeat(), "status"),
                           (self.acks.run(self.transport), "acks")):
            self._tasks.append(tasks.create_task(coro, name=f"server-{name}"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        try:
            if self.transport.connected.is_set():
                await self.transport.publish(self.topics.server_status, self._status_payload(False, "stopped"),
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
            if self.journal is not None:
                # A distillation cancelled mid-way may still be running in its thread: the model lock
                # makes the final checkpoint wait for it.
                await asyncio.to_thread(self._write_checkpoint, self._capture(self.version))
                self.journal.close()
            self._write_report()
            self._events.close()
            self._closed.set()

    async def closed(self) -> None:
        await self._closed.wait()

    def events(self, maxsize: int | None = None) -> EventStream:
        """A new bounded stream of this server's events (see :mod:`koala_async.nodes.events`)."""
        return self._events.stream(maxsize)

    @property
    def events_dropped(self) -> int:
        """Events dropped, over all streams, because a consumer fell behind."""
        return self._events.dropped

    # -- loops -----------------------------------------------------------------------------------

    async def _on_connect(self, transport: Transport) -> None:
        """(Re)publish retained state: a restarted broker may have lost it."""
        proxy = ProxySet(sender=self.config.node_id, seq=self._seq.next(), proxy_id=self.proxy_id,
                         inputs=self.proxy_x, num_classes=self.spec.num_classes, sent_at=time.time())
        await transport.publish(self.topics.proxy, encode(proxy), retain=True)
        await transport.publish(self.topics.knowledge, self._knowledge_payload(), retain=True)
        await transport.publish(self.topics.server_status, self._status_payload(True, "serving"), retain=True)

    def _take(self, msg: Incoming) -> None:
        """Verify, decode and dispatch one incoming message (a client's update or status). The
        transport calls it as each message is read: ingest never awaits, so it needs no task or
        queue of its own, and a busy server slows its reading from the broker (TCP backpressure)."""
        client_id = self.topics.client_of(msg.topic)
        is_update = not msg.topic.endswith("/status")
        try:
            envelope = verify(msg.payload, client_id, self.keys) if is_update else unwrap(msg.payload)[0]
            message = decode(envelope, self.limits)
        except MessageError as exc:
            self.rejects.error(exc, client_id or msg.topic)
            return
        if not is_update:
            if isinstance(message, Status) and message.sender == client_id:
                self.online[message.sender] = {"online": message.online, "state": message.state,
                                               **message.info}
                self._presence_changed()
            elif not msg.retain or isinstance(message, Status):
                self.rejects.reject("sender_mismatch" if isinstance(message, Status) else "wrong_kind",
                                    origin=msg.topic)
            return
        self._handle_update(message, envelope, client_id, msg.topic, len(msg.payload))

    def _presence_changed(self) -> None:
        """A client's status changed (the round-based modes wake up on it)."""

    def _handle_update(self, message: Any, envelope: bytes, client_id: str | None, topic: str,
                       size: int) -> None:
        """Admit (or count and drop) a decoded message that arrived on an update topic."""
        decision = self._admit(message, client_id)
        if decision is None:
            self.rejects.reject("wrong_kind", type(message).__name__, topic)
            return
        self.metrics.update_bytes += size
        reason = decision.reason if not decision.accepted else self._round_verdict(message)
        client = client_id or message.sender
        if reason != "accepted":
            self.rejects.reject(reason, f"seq={message.seq}", message.sender)
            self._verdict(message, client, reason, decision.staleness)
            return
        self._keep(message, envelope, decision.staleness)
        self._verdict(message, client, "accepted", decision.staleness)
        self._arrived.set()

    def _admit(self, message: Any, client_id: str | None) -> Decision | None:
        """This mode's admission decision on a message from an update topic; None if it is not the
        kind of message this mode takes."""
        if not isinstance(message, Update):
            return None
        return admit(message, client_id, self._admission_context(), self.seen)

    def _keep(self, update: Update, envelope: bytes, staleness: int) -> None:
        """Hold an accepted update for the learner."""
        if self.journal is not None:
            # Durable first, counted second: the published accepted count never runs ahead of disk.
            self.journal.append(envelope)
        self._record_accepted(update, envelope, staleness)

    def _round_verdict(self, update: Update) -> str:
        """``accepted``, or why the round-based modes refuse an otherwise admissible update."""
        return "accepted"

    def _verdict(self, update: Update | Weights, client: str, reason: str, staleness: int) -> None:
        """Tell the client (ack topic) and local event consumers what became of ``update``."""
        accepted = reason == "accepted"
        if self.config.acks:
            self.acks.offer(client, update.seq, accepted, reason, self.version, staleness)
        if self._events.listening:  # once per update: build no event nobody reads
            node = self.config.node_id
            self._events.emit(UpdateAccepted(node, client, update.seq, self.version, staleness) if accepted
                              else UpdateRejected(node, client, update.seq, self.version, reason))

    def _record_accepted(self, update: Update, envelope: bytes, staleness: int) -> None:
        self.seen.add(update.sender, update.seq)
        m = self.metrics
        m.accepted += 1
        m.accepted_by_client[update.sender] = m.accepted_by_client.get(update.sender, 0) + 1
        m.staleness_sum += staleness
        m.staleness_max = max(m.staleness_max, staleness)
        bucket = str(staleness) if staleness < 32 else "32+"
        m.staleness_hist[bucket] = m.staleness_hist.get(bucket, 0) + 1
        self._pending.append((update, envelope, time.monotonic()))
        self._dirty = True

    def _admission_context(self) -> AdmissionContext:
        ctx = self._ctx
        if ctx is None or ctx.version != self.version:  # the rest is fixed once the proxy set is
            ctx = self._ctx = AdmissionContext(
                version=self.version, proxy_id=self.proxy_id, n_proxy=len(self.proxy_x),
                num_classes=self.spec.num_classes, policy=self.config.staleness,
                accepted_tiers=self.config.accepted_tiers)
        return ctx

    async def _learn(self) -> None:
        cfg = self.config
        while True:
            try:
                async with asyncio.timeout(cfg.checkpoint_interval if self.journal else None):
                    await self._arrived.wait()
            except TimeoutError:
                if self._dirty:  # idle, but counters moved: persist them
                    await asyncio.to_thread(self._write_checkpoint, self._capture(self.version))
                continue
            if cfg.ingest_only:  # benchmarks: measure the ingest path alone
                # Drain in batches, as a learner busy distilling would: a wake-up per arrival would
                # load the ingest path with work the real server does not do.
                await asyncio.sleep(0.5)
                self._pending.clear()
                self._arrived.clear()
                continue
            if len(self._pending) < cfg.buffer_size:
                # A partial buffer is flushed after a short wait so a quiet federation still learns.
                try:
                    async with asyncio.timeout(2.0):
                        while len(self._pending) < cfg.buffer_size:
                            self._arrived.clear()
                            await self._arrived.wait()
                except TimeoutError:
                    pass
            batch, self._pending = self._pending, []
            self._arrived.clear()
            self._in_flight = len(batch)
            try:
                await self._advance(batch)
            finally:
                self._in_flight = 0

    async def _advance(self, batch: list[tuple[Update, bytes, float]], steps: int | None = None) -> None:
        """Fuse ``batch`` (accepted updates), distill, and publish the next knowledge version."""
        cfg = self.config
        for update, _, _ in batch:
            staleness = self.version - update.base_version
            trust = self.tier_trust.observe(update.tier, update.logits, update.sample_ids,
                                            self.knowledge_logits)
            weight = self.fusion.arrival_weight(staleness, update.n_samples, trust)
            self.fusion.add(update.sender, update.tier, update.base_version, update.logits,
                            update.sample_ids, weight, update.label_counts)
        targets, mask = self.fusion.targets(self.version)
        started = time.perf_counter()
        # Steps scale with the arrivals fused, so arrivals that queued up while the last
        # distillation ran still each buy training; capped so a burst cannot stall the loop.
        if steps is None:
            steps = cfg.distill_steps * min(len(batch), max(4, cfg.buffer_size))
        await asyncio.to_thread(self._distill_step, targets, mask, steps)
        self.metrics.distill_seconds += time.perf_counter() - started
        if self.journal is not None:
            # The new version is durable before anyone can see it.
            await asyncio.to_thread(self._write_checkpoint, self._capture(self.version + 1))
        self.version += 1
        self.metrics.timeline.append((round(time.monotonic() - self._started, 3), self.version,
                                      self.test_accuracy))
        payload = self._knowledge_payload()
        self.metrics.knowledge_bytes += len(payload)
        await self.transport.publish(self.topics.knowledge, payload, retain=True)
        self._events.emit(KnowledgeChanged(self.config.node_id, self.version, self.version - 1))
        self._record_fused(batch)
        await self._publish_status()
        log.info("version %d: test accuracy %.3f (%d accepted, %d rejected)", self.version,
                 self.test_accuracy, self.metrics.accepted, self.rejects.total)

    def _distill_step(self, targets: np.ndarray, mask: np.ndarray, steps: int) -> None:
        from koala_async.learning.distill import predict_logits

        with self._model_lock:
            before = self.distiller.steps_done
            self.distiller.distill(self.proxy_x, targets, mask, steps, self.config.max_distill_seconds)
            if mask.any():
                self.metrics.distill_steps_skipped += steps - (self.distiller.steps_done - before)
            self.knowledge_logits = predict_logits(self.distiller.model, self.proxy_x).astype(np.float16)
            self.test_accuracy = self._evaluate()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.status_interval)
            await self._publish_status()

    async def _publish_status(self) -> None:
        await self.transport.publish(self.topics.server_status, self._status_payload(True, "serving"),
                                     retain=True)

    # -- messages --------------------------------------------------------------------------------

    def _knowledge_payload(self) -> bytes:
        return encode(Knowledge(sender=self.config.node_id, seq=self._seq.next(), version=self.version,
                                proxy_id=self.proxy_id, num_classes=self.spec.num_classes,
                                temperature=self.config.temperature, logits=self.knowledge_logits,
                                accepted_tiers=self.config.accepted_tiers, sent_at=time.time(),
                                mode=self.config.mode))

    def snapshot(self) -> dict[str, Any]:
        """The server's counters, as published in its status and written to its report."""
        m = self.metrics
        return {
            "mode": self.config.mode,
            "version": self.version,
            "test_accuracy": self.test_accuracy,
            "large_model": getattr(self, "large_name", None),
            "accepted": m.accepted,
            "accepted_by_client": dict(m.accepted_by_client),
            "rejected": dict(self.rejects.counts),
            "staleness_mean": round(m.staleness_mean, 4),
            "staleness_max": m.staleness_max,
            "staleness_hist": dict(m.staleness_hist),
            "pending": len(self._pending) + self._in_flight,
            "update_bytes": m.update_bytes,
            "knowledge_bytes": m.knowledge_bytes,
            "distill_seconds": round(m.distill_seconds, 3),
            "fuse_latency": latency_summary(lat for _, lat in self.fuse_latency),
            "fuse_latency_recent": self._recent_latency(),
            "distill_steps_skipped": m.distill_steps_skipped,
            "uptime": round(time.monotonic() - self._started, 3),
            "tier_trust": self.tier_trust.as_dict(),
            "acks_dropped": self.acks.dropped,
            "clients_online": sorted(k for k, v in self.online.items() if v.get("online")),
        }

    def _recent_latency(self) -> dict[str, float | int]:
        """Fuse latency of the updates published in the last ``latency_window`` seconds."""
        since = time.monotonic() - self.config.latency_window
        return latency_summary(lat for at, lat in self.fuse_latency if at >= since)

    def _record_fused(self, batch: list[tuple[Any, bytes, float]]) -> None:
        """Each update of ``batch`` has just been published in a version: record its latency."""
        published = time.monotonic()
        self.fuse_latency.extend((published, published - arrived) for _, _, arrived in batch)

    def _status_payload(self, online: bool, state: str) -> bytes:
        return status_payload(self.config.node_id, self._seq.next(), "server", online, state, self.snapshot())

    def _write_report(self) -> None:
        if not self.config.report_path:
            return
        import json
        from pathlib import Path

        report = {**self.snapshot(), "timeline": self.metrics.timeline}
        Path(self.config.report_path).write_text(json.dumps(report, indent=2))

    # -- durability ------------------------------------------------------------------------------

    def _capture(self, version: int) -> dict[str, Any]:
        """The server's state as of now (on the event loop, so no arrival slips in half-way).

        Starts a new journal segment: records from here on are not covered by this checkpoint.
        """
        assert self.journal is not None
        journal_from = self.journal.rotate()
        self._dirty = False
        metrics = asdict(self.metrics)
        return {
            "format": CHECKPOINT_FORMAT, "version": version, "proxy_id": self.proxy_id,
            "large_model": self.large_name, "journal_from": journal_from,
            "knowledge_logits": self.knowledge_logits, "test_accuracy": self.test_accuracy,
            "fusion": [asdict(c) for c in self.fusion.contributions.values()],
            "seen": self.seen.to_state(), "metrics": metrics, "rejected": dict(self.rejects.counts),
            "pending": [envelope for _, envelope, _ in self._pending], "seq": self._seq.value,
        }

    def _write_checkpoint(self, state: dict[str, Any]) -> None:
        """Serialise ``state`` plus model and optimizer, replace the checkpoint atomically, then drop
        the journal segments it covers (blocking; runs in a thread)."""
        import torch

        assert self.journal is not None and self.config.state_dir
        with self._checkpoint_lock:
            if state["journal_from"] < self._checkpoint_from:
                return  # a later capture is already on disk; this one would roll it back
            with self._model_lock:
                state = {**state, "model": self.distiller.model.state_dict(),
                         "optimizer": self.distiller.optimizer.state_dict(),
                         "steps_done": self.distiller.steps_done}
                buffer = io.BytesIO()
                torch.save(state, buffer)
            atomic_write(Path(self.config.state_dir) / CHECKPOINT, buffer.getvalue())
            self._checkpoint_from = state["journal_from"]
            self.journal.drop_before(state["journal_from"])
        log.debug("checkpoint at version %d (%d accepted)", state["version"], state["metrics"]["accepted"])

    def _restore(self, state_dir: Path) -> None:
        import torch

        path = state_dir / CHECKPOINT
        state = torch.load(path, weights_only=False)  # our own file, written by _write_checkpoint
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT}",
                              source=str(path))
        if state["proxy_id"] != self.proxy_id or state["large_model"] != self.large_name:
            raise ConfigError(f"checkpoint is for proxy {state['proxy_id']} / {state['large_model']}, this "
                              f"server has {self.proxy_id} / {self.large_name}: move {state_dir} away to "
                              "start afresh", source=str(path))
        self.distiller.model.load_state_dict(state["model"])
        self.distiller.optimizer.load_state_dict(state["optimizer"])
        self.distiller.steps_done = state["steps_done"]
        self.version = state["version"]
        self.knowledge_logits = state["knowledge_logits"]
        self.test_accuracy = state["test_accuracy"]
        for item in state["fusion"]:
            self.fusion.contributions[item["sender"]] = Contribution(**item)
        self.seen = SeqWindow.from_state(state["seen"])
        metrics = state["metrics"]
        metrics["timeline"] = [tuple(t) for t in metrics["timeline"]]
        self.metrics = ServerMetrics(**metrics)
        self.rejects.counts = Counter(state["rejected"])
        self._seq = SeqCounter(max(state["seq"], SeqCounter().value))
        for envelope in state["pending"]:
            update = decode(envelope, self.limits)
            assert isinstance(update, Update)
            self._pending.append((update, envelope, time.monotonic()))
        self._journal_from = state["journal_from"]
        log.info("resumed from %s: version %d, %d accepted, %d pending", path, self.version,
                 self.metrics.accepted, len(self._pending))

    def _replay_journal(self, state_dir: Path) -> None:
        """Re-admit updates accepted after the last checkpoint, then open a fresh journal segment."""
        self.journal = Journal(state_dir)
        replayed = 0
        for envelope in self.journal.replay(getattr(self, "_journal_from", 0)):
            try:
                update = decode(envelope, self.limits)
            except MessageError as exc:  # cannot happen for records we wrote; do not die over it
                log.warning("journal record skipped: %s", exc)
                continue
            if not isinstance(update, Update) or self.seen.seen(update.sender, update.seq):
                continue
            self._record_accepted(update, envelope, max(self.version - update.base_version, 0))
            replayed += 1
        if replayed:
            log.info("replayed %d accepted updates from the journal", replayed)


def latency_summary(samples: Iterable[float]) -> dict[str, float | int]:
    """Count, p50, p99 and max of latency samples in seconds (zeros when there are none)."""
    values = np.fromiter(samples, dtype=np.float64)
    if not len(values):
        return {"count": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    p50, p99 = np.percentile(values, [50, 99])
    return {"count": len(values), "p50": round(float(p50), 4), "p99": round(float(p99), 4),
            "max": round(float(values.max()), 4)}


CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
