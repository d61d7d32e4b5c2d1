"""The server node: ingests client logits whenever they arrive, distills the large model, publishes
knowledge. No rounds: each accepted arrival (or buffer of ``buffer_size`` arrivals) triggers a fusion
and a few distillation steps, then a new knowledge version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from koala_async.core.admission import AdmissionContext, admit
from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import (Knowledge, Limits, ProxySet, Status, Update, decode, encode)
from koala_async.core.fusion import Fusion, FusionConfig
from koala_async.core.staleness import StalenessPolicy
from koala_async.core.topics import Topics, check_id
from koala_async.errors import MessageError
from koala_async.io.transport import BrokerAddress, Transport, Will
from koala_async.nodes.common import RejectCounter, SeqCounter, limit_threads, status_payload

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """Everything a server node needs; loadable from the ``[server]`` table of a TOML file."""

    node_id: str = "server"
    broker: str = "mqtt://127.0.0.1:1883"
    federation: str = "default"
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
    distill_steps: int = 20
    buffer_size: int = 1
    accepted_tiers: tuple[str, ...] = ()
    staleness: StalenessPolicy = field(default_factory=StalenessPolicy)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    status_interval: float = 2.0
    max_payload_bytes: int = 8 * 1024 * 1024
    threads: int = 1
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    report_path: str | None = None

    def __post_init__(self) -> None:
        check_id(self.node_id, "node_id")
        if self.distill_steps < 1 or self.buffer_size < 1:
            raise ValueError("distill_steps and buffer_size must be >= 1")


@dataclass
class ServerMetrics:
    accepted: int = 0
    staleness_sum: int = 0
    staleness_max: int = 0
    update_bytes: int = 0
    knowledge_bytes: int = 0
    distill_seconds: float = 0.0
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
        self._seq = SeqCounter()
        self._pending: list[tuple[Update, int]] = []
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
                                   temperature=cfg.temperature, batch_size=cfg.batch_size, seed=cfg.seed)
        self.fusion = Fusion(len(self.proxy_x), self.spec.num_classes, cfg.fusion, cfg.staleness)
        self.knowledge_logits: np.ndarray | None = None
        self.test_accuracy = self._evaluate()
        self.metrics.timeline.append((0.0, 0, self.test_accuracy))

    def _evaluate(self) -> float:
        from koala_async.learning.distill import accuracy

        return accuracy(self.distiller.model, self.test.x, self.test.y)

    async def __aenter__(self) -> ServerNode:
        await asyncio.to_thread(self._prepare)
        cfg = self.config
        address = BrokerAddress.parse(cfg.broker, ca_file=cfg.ca_file)
        if cfg.username:
            address = BrokerAddress(**{**asdict(address), "username": cfg.username, "password": cfg.password})
        will = Will(self.topics.server_status,
                    status_payload(cfg.node_id, 0, "server", False, "lost", {}))
        self._stack = AsyncExitStack()
        self.transport = await self._stack.enter_async_context(Transport(
            address, f"koala-{cfg.federation}-{cfg.node_id}", will=will, clean_session=False,
            subscriptions=((self.topics.all_updates, 1), (self.topics.all_client_status, 1)),
            on_connect=self._on_connect))
        tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._started = time.monotonic()
        for coro, name in ((self._ingest(), "ingest"), (self._learn(), "learn"), (self._heartbeat(), "status")):
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
            await self._stack.aclose()
            self._write_report()
            self._closed.set()

    async def closed(self) -> None:
        await self._closed.wait()

    # -- loops -----------------------------------------------------------------------------------

    async def _on_connect(self, transport: Transport) -> None:
        """(Re)publish retained state: a restarted broker may have lost it."""
        proxy = ProxySet(sender=self.config.node_id, seq=self._seq.next(), proxy_id=self.proxy_id,
                         inputs=self.proxy_x, num_classes=self.spec.num_classes, sent_at=time.time())
        await transport.publish(self.topics.proxy, encode(proxy), retain=True)
        await transport.publish(self.topics.knowledge, self._knowledge_payload(), retain=True)
        await transport.publish(self.topics.server_status, self._status_payload(True, "serving"), retain=True)

    async def _ingest(self) -> None:
        async for msg in self.transport.messages():
            client_id = self.topics.client_of(msg.topic)
            try:
                message = decode(msg.payload, self.limits)
            except MessageError as exc:
                self.rejects.error(exc, client_id or msg.topic)
                continue
            if msg.topic.endswith("/status"):
                if isinstance(message, Status) and message.sender == client_id:
                    self.online[message.sender] = {"online": message.online, "state": message.state,
                                                   **message.info}
                elif not msg.retain or isinstance(message, Status):
                    self.rejects.reject("sender_mismatch" if isinstance(message, Status) else "wrong_kind",
                                        origin=msg.topic)
                continue
            if not isinstance(message, Update):
                self.rejects.reject("wrong_kind", type(message).__name__, msg.topic)
                continue
            self.metrics.update_bytes += len(msg.payload)
            decision = admit(message, client_id, self._admission_context(), self.seen)
            if not decision.accepted:
                self.rejects.reject(decision.reason, f"seq={message.seq}", message.sender)
                continue
            self.seen.add(message.sender, message.seq)
            self.metrics.accepted += 1
            self.metrics.accepted_by_client[message.sender] = self.metrics.accepted_by_client.get(message.sender, 0) + 1
            self.metrics.staleness_sum += decision.staleness
            self.metrics.staleness_max = max(self.metrics.staleness_max, decision.staleness)
            bucket = str(decision.staleness) if decision.staleness < 32 else "32+"
            self.metrics.staleness_hist[bucket] = self.metrics.staleness_hist.get(bucket, 0) + 1
            self._pending.append((message, self.version))
            self._arrived.set()

    def _admission_context(self) -> AdmissionContext:
        return AdmissionContext(version=self.version, proxy_id=self.proxy_id, n_proxy=len(self.proxy_x),
                                num_classes=self.spec.num_classes, policy=self.config.staleness,
                                accepted_tiers=self.config.accepted_tiers)

    async def _learn(self) -> None:
        cfg = self.config
        while True:
            await self._arrived.wait()
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
            for update, _ in batch:
                staleness = self.version - update.base_version
                trust = 1.0
                weight = self.fusion.arrival_weight(staleness, update.n_samples, trust)
                self.fusion.add(update.sender, update.tier, update.base_version, update.logits,
                                update.sample_ids, weight, update.label_counts)
            targets, mask = self.fusion.targets(self.version)
            started = time.perf_counter()
            await asyncio.to_thread(self._distill_step, targets, mask)
            self.metrics.distill_seconds += time.perf_counter() - started
            self.version += 1
            self.metrics.timeline.append((round(time.monotonic() - self._started, 3), self.version,
                                          self.test_accuracy))
            payload = self._knowledge_payload()
            self.metrics.knowledge_bytes += len(payload)
            await self.transport.publish(self.topics.knowledge, payload, retain=True)
            await self._publish_status()
            log.info("version %d: test accuracy %.3f (%d accepted, %d rejected)", self.version,
                     self.test_accuracy, self.metrics.accepted, self.rejects.total)

    def _distill_step(self, targets: np.ndarray, mask: np.ndarray) -> None:
        from koala_async.learning.distill import predict_logits

        self.distiller.distill(self.proxy_x, targets, mask, self.config.distill_steps)
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
                                accepted_tiers=self.config.accepted_tiers, sent_at=time.time()))

    def snapshot(self) -> dict[str, Any]:
        """The server's counters, as published in its status and written to its report."""
        m = self.metrics
        return {
            "version": self.version,
            "test_accuracy": self.test_accuracy,
            "large_model": getattr(self, "large_name", None),
            "accepted": m.accepted,
            "accepted_by_client": dict(m.accepted_by_client),
            "rejected": dict(self.rejects.counts),
            "staleness_mean": round(m.staleness_mean, 4),
            "staleness_max": m.staleness_max,
            "staleness_hist": dict(m.staleness_hist),
            "pending": len(self._pending),
            "update_bytes": m.update_bytes,
            "knowledge_bytes": m.knowledge_bytes,
            "distill_seconds": round(m.distill_seconds, 3),
            "uptime": round(time.monotonic() - self._started, 3),
            "clients_online": sorted(k for k, v in self.online.items() if v.get("online")),
        }

    def _status_payload(self, online: bool, state: str) -> bytes:
        return status_payload(self.config.node_id, self._seq.next(), "server", online, state, self.snapshot())

    def _write_report(self) -> None:
        if not self.config.report_path:
            return
        import json
        from pathlib import Path

        report = {**self.snapshot(), "timeline": self.metrics.timeline}
        Path(self.config.report_path).write_text(json.dumps(report, indent=2))
