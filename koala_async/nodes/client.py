"""The client node: trains its small model on private data when ready, distilling the server's latest
knowledge, and publishes float16 logits on proxy samples. It never sends data, and never waits for
other clients.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from koala_async.core.envelope import MODES, Knowledge, Limits, ProxySet, Update, decode, encode
from koala_async.core.resources import PROFILES, ResourceSnapshot, get_profile
from koala_async.core.signing import sign, unwrap
from koala_async.core.tiering import (
    TierPolicy,
    TierSpec,
    choose_tier,
    next_tier,
    readiness,
    samples_per_epoch,
)
from koala_async.core.topics import Topics, check_id
from koala_async.errors import MessageError
from koala_async.io.transport import Transport, Will
from koala_async.nodes.client_state import ClientState
from koala_async.nodes.common import RejectCounter, SeqCounter, broker_address, limit_threads, status_payload

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-3  # Adam, for the client's small model
    kd_weight: float = 1.0
    # Adam learning rate when the client trains the server's large model instead (fedavg mode): a
    # 620k-parameter CNN wants a smaller step than a 10k one (on digits, 3e-3 beat 1e-2 for it).
    fedavg_lr: float = 3e-3


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client node needs; loadable from the ``[client]`` table of a TOML file."""

    node_id: str = "client-0"
    broker: str = "mqtt://127.0.0.1:1883"
    federation: str = "default"
    # "async" (KOALA, no rounds), "sync" (KOALA, train once per knowledge version; also followed when
    # the server's knowledge says mode "sync") or "fedavg" (train the server's model: nodes/fedavg_client.py).
    mode: str = "async"
    # Private data: an .npz file with x and y, or shard ``shard`` of ``num_shards`` Dirichlet shards
    # derived from ``dataset`` and ``seed`` (the same derivation the server uses for proxy and test).
    data_path: str | None = None
    dataset: str = "digits"
    seed: int = 0
    shard: int = 0
    num_shards: int = 1
    alpha: float = 0.5
    test_fraction: float = 0.2
    proxy_fraction: float = 0.25
    tier: str | None = None  # architecture name; "auto" = chosen from measured resources; None = "small"
    profile: str | None = None  # simulate a device class ("pi-zero", "pi-4", "laptop", ...): caps the probe
    tier_policy: TierPolicy = field(default_factory=TierPolicy)
    train: TrainSettings = field(default_factory=TrainSettings)
    max_updates: int = 0  # 0 = keep contributing until stopped
    interval: float = 1.0  # seconds between trainings (with +-50% jitter)
    proxy_subset: float = 1.0  # share of proxy samples to publish logits for per update
    send_label_counts: bool = True
    slowdown: float = 1.0  # > 1 simulates a slower device: training takes this many times longer
    threads: int = 1
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    max_payload_bytes: int = 64 * 1024 * 1024
    # Durability: where the pending update and seq counter live (None = nowhere); a pending update
    # older than this many knowledge versions at restart is discarded instead of published.
    state_dir: str | None = None
    pending_max_staleness: int = 10
    signing_key: str | None = None  # HMAC key shared with the server's keys file
    keepalive: int = 30  # MQTT keepalive, seconds: a dead link is noticed after 1-1.5x this

    def __post_init__(self) -> None:
        check_id(self.node_id, "node_id")
        if not 0 < self.proxy_subset <= 1:
            raise ValueError("proxy_subset must be in (0, 1]")
        if not 0 <= self.shard < self.num_shards:
            raise ValueError(f"shard {self.shard} is not in [0, num_shards={self.num_shards})")
        if self.slowdown < 1:
            raise ValueError("slowdown must be >= 1")
        if self.keepalive < 1:
            raise ValueError("keepalive must be >= 1 second")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {list(MODES)}")
        if self.profile is not None and self.profile not in PROFILES:
            raise ValueError(f"unknown device profile {self.profile!r}; known: {sorted(PROFILES)}")


class ClientNode:
    """``async with ClientNode(config) as client: await client.done()``."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.topics = Topics(config.federation)
        self.limits = Limits(max_payload_bytes=config.max_payload_bytes)
        self.rejects = RejectCounter(log)
        self.proxy: ProxySet | None = None
        self.knowledge: Knowledge | None = None
        self.updates_sent = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.state = "starting"
        self.last_loss = float("nan")
        self.profile = get_profile(config.profile) if config.profile else None
        self.resources = ResourceSnapshot()
        self.tier_reason = ""
        self._trained_on: tuple[int | None, int] | None = None  # (knowledge version, data size)
        self._seq = SeqCounter()
        self._state = ClientState(config.state_dir) if config.state_dir else None
        if self._state is not None:
            self._seq = SeqCounter(max(self._seq.value, self._state.last_seq()))
        self._proxy_ready = asyncio.Event()
        self._new_version = asyncio.Event()  # set whenever knowledge (or a global model) arrives
        self._done = asyncio.Event()
        self._rng = random.Random(f"{config.seed}-{config.node_id}")
        self._stack: AsyncExitStack | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _prepare(self) -> None:
        from koala_async.learning import data as datasets
        from koala_async.learning.catalog import tier_catalog
        from koala_async.learning.models import client_tiers

        limit_threads(self.config.threads)
        cfg = self.config
        if cfg.data_path:
            self.data = datasets.load_npz(cfg.data_path)
        else:
            fed = datasets.federate(cfg.dataset, cfg.seed, cfg.num_shards, cfg.alpha, cfg.test_fraction,
                                    cfg.proxy_fraction)
            self.data = fed.client(cfg.shard)
        self.catalog = tier_catalog(self.data.spec)
        self.resources = self._probe()
        if cfg.tier == "auto":
            choice = choose_tier(self.resources, self.catalog, cfg.tier_policy, self._samples_per_epoch())
            self.tier, self.tier_reason = choice.tier, choice.reason
        else:
            self.tier = cfg.tier or client_tiers(self.data.spec.kind)[1]
            self.tier_reason = "configured" if cfg.tier else "default"
        self._build_trainer()
        self.label_counts = np.bincount(self.data.y, minlength=self.data.spec.num_classes).astype(np.uint32)

    def _build_trainer(self) -> None:
        from koala_async.learning.distill import LocalTrainer, TrainConfig
        from koala_async.learning.models import build_model

        cfg, t = self.config, self.config.train
        self.trainer = LocalTrainer(build_model(self.tier, self.data.spec, seed=cfg.seed + cfg.shard),
                                    TrainConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr,
                                                kd_weight=t.kd_weight),
                                    seed=cfg.seed + cfg.shard)

    def _probe(self) -> ResourceSnapshot:
        from koala_async.io.resources import probe

        return probe(self.profile)

    def _samples_per_epoch(self, distilling: bool = True) -> int:
        kd = distilling and self.config.train.kd_weight > 0
        return samples_per_epoch(len(self.data), self.config.train.batch_size, kd)

    async def _wait_until_ready(self) -> None:
        """Re-probe until the readiness policy says train; publish why we wait meanwhile. Then
        re-evaluate the tier (only a resource drop changes a trained model's tier)."""
        cfg = self.config
        since = time.monotonic()
        while True:
            self.resources = await asyncio.to_thread(self._probe)
            version = self.knowledge.version if self.knowledge else None
            last_version, last_size = self._trained_on or (None, -1)
            verdict = readiness(self.resources, cfg.tier_policy, trained_before=self._trained_on is not None,
                                new_knowledge=version != last_version, new_data=len(self.data) != last_size,
                                waited_s=time.monotonic() - since)
            if verdict.ready:
                break
            if self.state != verdict.reason:
                self.state = verdict.reason
                log.info("%s %s", cfg.node_id, verdict.reason)
                await self._publish_status()
            await asyncio.sleep(cfg.interval)
        if cfg.tier == "auto":
            choice = choose_tier(self.resources, self.catalog, cfg.tier_policy, self._samples_per_epoch())
            tier = next_tier(self.tier, choice, self.catalog)
            if tier != self.tier:
                log.info("%s moves from %s to %s: %s", cfg.node_id, self.tier, tier, choice.reason)
                self.tier, self.tier_reason = tier, choice.reason
                await asyncio.to_thread(self._build_trainer)

    def _simulated_seconds(self, distilling: bool) -> float:
        """How long this training takes at the profile's FLOP/s (0 without a profile)."""
        if self.profile is None or not self.resources.flops:
            return 0.0
        spec = self._trained_spec()
        if spec is None:  # an explicit architecture outside the catalog
            return 0.0
        flops = spec.train_flops_per_sample * self._samples_per_epoch(distilling) * self.config.train.epochs
        return flops / self.resources.flops

    def _trained_spec(self) -> TierSpec | None:
        """The measured architecture this client trains (None for one outside the catalog)."""
        return next((t for t in getattr(self, "catalog", ()) if t.name == getattr(self, "tier", None)), None)

    def _subscriptions(self) -> tuple[tuple[str, int], ...]:
        return ((self.topics.proxy, 1), (self.topics.knowledge, 1))

    async def __aenter__(self) -> ClientNode:
        await asyncio.to_thread(self._prepare)
        cfg = self.config
        address = broker_address(cfg.broker, username=cfg.username, password=cfg.password,
                                 ca_file=cfg.ca_file, cert_file=cfg.cert_file, key_file=cfg.key_file,
                                 tls_insecure=cfg.tls_insecure)
        will = Will(self.topics.client_status(cfg.node_id),
                    status_payload(cfg.node_id, 0, "client", False, "lost", {"tier": self.tier}))
        self._stack = AsyncExitStack()
        self.transport = await self._stack.enter_async_context(Transport(
            address, f"koala-{cfg.federation}-{cfg.node_id}", will=will,
            subscriptions=self._subscriptions(), on_connect=self._on_connect, seed=hash(cfg.node_id) & 0xFFFF,
            keepalive=cfg.keepalive))
        tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._tasks.append(tasks.create_task(self._receive(), name=f"{cfg.node_id}-receive"))
        self._tasks.append(tasks.create_task(self._contribute(), name=f"{cfg.node_id}-train"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        try:
            if self.transport.connected.is_set():
                await self.transport.publish(self.topics.client_status(self.config.node_id),
                                             self._status_payload(False, "left"), retain=True, timeout=2)
        except Exception as err:  # noqa: BLE001 - best effort on the way out
            log.debug("final status not sent: %s", err)
        finally:
            assert self._stack is not None
            await self._stack.aclose()

    async def done(self) -> None:
        """Returns once ``max_updates`` updates have been published (never when it is 0)."""
        await self._done.wait()

    async def _on_connect(self, transport: Transport) -> None:
        await transport.publish(self.topics.client_status(self.config.node_id),
                                self._status_payload(True, self.state), retain=True)

    async def _receive(self) -> None:
        async for msg in self.transport.messages():
            self.bytes_down += len(msg.payload)
            try:
                message = decode(msg.payload, self.limits)
            except MessageError as exc:
                self.rejects.error(exc, msg.topic)
                continue
            if msg.topic == self.topics.proxy and isinstance(message, ProxySet):
                self.proxy = message
                self._proxy_ready.set()
            elif msg.topic == self.topics.knowledge and isinstance(message, Knowledge):
                # Newest by arrival: a restarted server may legitimately resume at a lower version.
                self.knowledge = message
                self._new_version.set()
            else:
                self.rejects.reject("wrong_kind", type(message).__name__, msg.topic)

    async def _contribute(self) -> None:
        cfg = self.config
        self.state = "waiting for proxy set"
        await self._publish_status()
        await self._proxy_ready.wait()
        await self._resume_pending()
        while cfg.max_updates == 0 or self.updates_sent < cfg.max_updates:
            self.state = "idle"
            if self._in_rounds():
                await self._wait_for_new_version()  # the round is the pacing: no extra idle time
            else:
                await asyncio.sleep(cfg.interval * (0.5 + self._rng.random()))
            await self._wait_until_ready()
            await self._train_and_publish()
        self.state = "done"
        await self._publish_status()
        self._done.set()

    def _in_rounds(self) -> bool:
        """Synchronous rounds: configured, or announced by the server's knowledge."""
        return self.config.mode != "async" or (self.knowledge is not None and self.knowledge.mode != "async")

    def _current_version(self) -> int | None:
        return self.knowledge.version if self.knowledge is not None else None

    async def _wait_for_new_version(self) -> None:
        """Wait until the server publishes a version this client has not trained on yet."""
        trained = self._trained_on[0] if self._trained_on is not None else None
        if self._trained_on is not None and self._current_version() == trained:
            self.state = "waiting for the next round"
            await self._publish_status()
        while self._current_version() is None or (self._trained_on is not None
                                                  and self._current_version() == trained):
            self._new_version.clear()
            await self._new_version.wait()

    async def _train_and_publish(self) -> None:
        cfg = self.config
        proxy = self.proxy
        assert proxy is not None
        knowledge = self.knowledge
        teacher = None
        base_version = 0
        if knowledge is not None and knowledge.proxy_id == proxy.proxy_id:
            base_version = knowledge.version
            if knowledge.logits is not None and len(knowledge.logits) == len(proxy.inputs):
                teacher = knowledge.logits
        self.state = "training"
        started = time.perf_counter()
        ids = None
        if cfg.proxy_subset < 1:
            count = max(1, int(round(len(proxy.inputs) * cfg.proxy_subset)))
            ids = np.sort(np.asarray(self._rng.sample(range(len(proxy.inputs)), count), dtype=np.uint32))
        logits = await asyncio.to_thread(self._train, proxy.inputs, teacher, ids)
        self._trained_on = (knowledge.version if knowledge else None, len(self.data))
        await self._pace(started, teacher is not None)
        update = Update(sender=cfg.node_id, seq=self._seq.next(), base_version=base_version, tier=self.tier,
                        n_samples=len(self.data), proxy_id=proxy.proxy_id, logits=logits, sample_ids=ids,
                        sent_at=time.time(),
                        label_counts=self.label_counts if cfg.send_label_counts else None)
        payload = encode(update)
        if cfg.signing_key:
            payload = sign(payload, cfg.signing_key.encode())
        if self._state is not None:
            self._state.save_pending(payload, update.seq)
        self.state = "publishing"
        await self.transport.publish(self.topics.update(cfg.node_id), payload, qos=1)
        if self._state is not None:
            self._state.clear_pending()  # PUBACK received: the broker holds it now
        self.updates_sent += 1
        self.bytes_up += len(payload)
        await self._publish_status()

    async def _pace(self, started: float, distilling: bool) -> None:
        """Make a training that began at ``started`` (perf_counter) last as long as on this device."""
        # A simulated device takes as long as its profile's FLOP/s make this training take.
        simulated = self._simulated_seconds(distilling)
        if simulated > 0:
            await asyncio.sleep(max(0.0, simulated - (time.perf_counter() - started)))
        if self.config.slowdown > 1:
            await asyncio.sleep((time.perf_counter() - started) * (self.config.slowdown - 1))

    async def _resume_pending(self) -> None:
        """Publish an update a crash left unacknowledged, unless it has gone stale meanwhile."""
        payload = self._state.pending() if self._state is not None else None
        if payload is None:
            return
        assert self._state is not None and self.proxy is not None
        if self.knowledge is None:  # retained knowledge normally arrives with the proxy set
            await asyncio.sleep(1.0)
        reason = ""
        try:
            update = decode(unwrap(payload)[0], self.limits)
        except MessageError as exc:
            update, reason = None, f"unreadable ({exc.reason})"
        current = self.knowledge.version if self.knowledge else 0
        if isinstance(update, Update):
            if update.proxy_id != self.proxy.proxy_id:
                reason = "built on another proxy set"
            elif current - update.base_version > self.config.pending_max_staleness:
                reason = (f"stale: built on version {update.base_version}, knowledge is at {current} "
                          f"(> {self.config.pending_max_staleness} behind)")
        elif not reason:
            reason = "not an update"
        if reason:
            log.warning("%s: discarding the pending update left by a crash: %s", self.config.node_id, reason)
        else:
            log.info("%s: publishing the pending update left by a crash", self.config.node_id)
            await self.transport.publish(self.topics.update(self.config.node_id), payload, qos=1)
            self.updates_sent += 1
            self.bytes_up += len(payload)
        self._state.clear_pending()

    def _train(self, proxy_x: np.ndarray, teacher: np.ndarray | None, ids: np.ndarray | None) -> np.ndarray:
        from koala_async.learning.distill import predict_logits

        px = proxy_x.astype(np.float32)
        self.last_loss = self.trainer.train(self.data.x, self.data.y, px, teacher)
        chosen = px if ids is None else px[ids]
        return predict_logits(self.trainer.model, chosen).astype(np.float16)

    def snapshot(self) -> dict[str, Any]:
        from koala_async.io.resources import peak_rss_bytes

        spec = self._trained_spec()
        return {
            "mode": self.config.mode,
            "tier": getattr(self, "tier", None),
            "model_params": spec.params if spec else None,
            "train_flops_per_sample": spec.train_flops_per_sample if spec else None,
            "rss_peak_bytes": peak_rss_bytes(),
            "tier_reason": self.tier_reason,
            "resources": self.resources.summary(),
            "n_samples": len(self.data) if hasattr(self, "data") else 0,
            "updates_sent": self.updates_sent,
            "knowledge_version": self.knowledge.version if self.knowledge else 0,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "rejected": dict(self.rejects.counts),
            "last_loss": None if self.last_loss != self.last_loss else round(self.last_loss, 4),
        }

    def _status_payload(self, online: bool, state: str) -> bytes:
        return status_payload(self.config.node_id, self._seq.next(), "client", online, state, self.snapshot())

    async def _publish_status(self) -> None:
        await self.transport.publish(self.topics.client_status(self.config.node_id),
                                     self._status_payload(True, self.state), retain=True)
