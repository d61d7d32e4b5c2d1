"""The client node: trains its small model on private data when ready, distilling the server's latest
knowledge, and publishes float16 logits on proxy samples. It never sends data, and never waits for
other clients.

Embedded in a gateway's own asyncio program, it runs in the caller's loop (training in a worker
thread), takes private samples as they come (:meth:`ClientNode.add_samples`, bounded by
``max_samples`` under a ``retention`` policy, see :mod:`koala_async.core.retention`), may start with
no data at all (``dataset = "none"``: it trains once it holds ``min_samples``), and reports what
happens through :meth:`ClientNode.events`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from koala_async.core.envelope import MODES, Ack, Knowledge, Limits, Message, ProxySet, Update, decode, encode
from koala_async.core.resources import PROFILES, ResourceSnapshot, get_profile
from koala_async.core.retention import RETENTIONS, AddResult
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
from koala_async.io.transport import Incoming, Transport, Will
from koala_async.nodes.client_inputs import ClientInputs
from koala_async.nodes.client_state import ClientState
from koala_async.nodes.common import RejectCounter, SeqCounter, broker_address, limit_threads, status_payload
from koala_async.nodes.events import (
    EventHub,
    EventStream,
    KnowledgeChanged,
    TierChanged,
    UpdateAccepted,
    UpdatePublished,
    UpdateRejected,
    link_listener,
)
from koala_async.nodes.workers import Workers

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
    # derived from ``dataset`` and ``seed`` (the same derivation the server uses for proxy and test),
    # or nothing (dataset "none"): an embedded client fed through ``add_samples``.
    data_path: str | None = None
    dataset: str | None = "digits"
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
    # Samples held in memory (initial data plus everything added), and which survive past that:
    # "reservoir" = a uniform sample of all ever seen (seeded), "newest" = a sliding window.
    max_samples: int = 10_000
    retention: str = "reservoir"
    min_samples: int = 10  # no training before this many samples are held
    # Input spec of an embedded client; inferred (first samples, then the server's proxy set) if unset.
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    event_queue: int = 256  # per events() consumer; a full queue drops its oldest event

    def __post_init__(self) -> None:
        check_id(self.node_id, "node_id")
        if self.retention not in RETENTIONS:
            raise ValueError(f"retention must be one of {list(RETENTIONS)}, got {self.retention!r}")
        if self.max_samples < 1 or not 1 <= self.min_samples <= self.max_samples:
            raise ValueError("need 1 <= min_samples <= max_samples")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        if self.event_queue < 1:
            raise ValueError("event_queue must be >= 1")
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
    """``async with ClientNode(config) as client: await client.done()``.

    Everything runs in the caller's event loop; cancelling the task inside ``async with`` unwinds the
    node completely (its tasks, and any training thread, which stops after its current minibatch).
    """

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
        self._trained_on: tuple[int | None, int] | None = None  # (knowledge version, samples seen)
        self.inputs = ClientInputs(config)
        self.samples = self.inputs.buffer  # the private samples held (bounded; see add_samples)
        self.tier: str | None = None
        self.trainer: Any = None
        self.catalog: tuple[Any, ...] = ()
        self.updates_accepted = 0
        self.updates_rejected: Counter[str] = Counter()
        self._events = EventHub(config.node_id, config.event_queue)
        self._sent_seqs: deque[int] = deque(maxlen=1024)  # seqs we published: the acks we expect
        self._workers = Workers()  # training and probing threads, joined on exit
        self._initial: tuple[np.ndarray, np.ndarray, int] | None = None  # data loaded by _prepare
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
        """Thread setup, the first probe and the configured data (blocking; runs in a thread). The
        model is built once the input spec is known and ``min_samples`` are held."""
        limit_threads(self.config.threads)
        self.resources = self._probe()
        self._initial = self.inputs.load_initial()

    @property
    def data(self) -> Any:
        """The private samples held now, as a ``learning.data.Dataset`` (a copy)."""
        from koala_async.learning.data import Dataset

        x, y = self.samples.arrays()
        spec = self.inputs.spec()
        assert spec is not None, "no input spec yet: no data and no proxy set"
        return Dataset(x, y, spec)

    def _setup_model(self) -> None:
        """Choose the tier and build the trainer (blocking; runs in a thread once the spec is known)."""
        from koala_async.learning.catalog import tier_catalog
        from koala_async.learning.models import client_tiers

        cfg, spec = self.config, self.inputs.spec()
        assert spec is not None
        self.catalog = tier_catalog(spec)
        if cfg.tier == "auto":
            choice = choose_tier(self.resources, self.catalog, cfg.tier_policy, self._samples_per_epoch())
            self.tier, self.tier_reason = choice.tier, choice.reason
        else:
            self.tier = cfg.tier or client_tiers(spec.kind)[1]
            self.tier_reason = "configured" if cfg.tier else "default"
        self._build_trainer()

    def _build_trainer(self) -> None:
        from koala_async.learning.distill import LocalTrainer, TrainConfig
        from koala_async.learning.models import build_model

        cfg, t, spec = self.config, self.config.train, self.inputs.spec()
        assert self.tier is not None and spec is not None
        self.trainer = LocalTrainer(build_model(self.tier, spec, seed=cfg.seed + cfg.shard),
                                    TrainConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr,
                                                kd_weight=t.kd_weight),
                                    seed=cfg.seed + cfg.shard)

    def add_samples(self, x: Any, y: Any) -> AddResult:
        """Add private samples ``x`` (n, *input_shape) with integer labels ``y`` (n,) to a running (or
        not yet started) client, from the event loop's thread. Memory stays bounded by
        ``max_samples`` under the ``retention`` policy; the next training uses them (new data makes
        the client ready). Bad input raises :class:`~koala_async.errors.DataError` and changes nothing.
        """
        return self.inputs.add(x, y)

    def events(self, maxsize: int | None = None) -> EventStream:
        """A new bounded stream of this client's events (see :mod:`koala_async.nodes.events`)."""
        return self._events.stream(maxsize)

    @property
    def events_dropped(self) -> int:
        """Events dropped, over all streams, because a consumer fell behind."""
        return self._events.dropped

    def _probe(self) -> ResourceSnapshot:
        from koala_async.io.resources import probe

        return probe(self.profile)

    def _samples_per_epoch(self, distilling: bool = True) -> int:
        kd = distilling and self.config.train.kd_weight > 0
        return samples_per_epoch(len(self.samples), self.config.train.batch_size, kd)

    async def _wait_until_ready(self) -> None:
        """Re-probe until the readiness policy says train; publish why we wait meanwhile. Then
        re-evaluate the tier (only a resource drop changes a trained model's tier)."""
        cfg = self.config
        since = time.monotonic()
        while True:
            self.resources = await self._workers.run(self._probe)
            version = self.knowledge.version if self.knowledge else None
            last_version, last_seen = self._trained_on or (None, -1)
            verdict = readiness(self.resources, cfg.tier_policy, trained_before=self._trained_on is not None,
                                new_knowledge=version != last_version,
                                new_data=self.samples.seen != last_seen,
                                waited_s=time.monotonic() - since)
            if verdict.ready:
                break
            if self.state != verdict.reason:
                self.state = verdict.reason
                log.info("%s %s", cfg.node_id, verdict.reason)
                await self._publish_status()
            await asyncio.sleep(cfg.interval)
        if cfg.tier == "auto" and self.tier is not None:
            choice = choose_tier(self.resources, self.catalog, cfg.tier_policy, self._samples_per_epoch())
            tier = next_tier(self.tier, choice, self.catalog)
            if tier != self.tier:
                log.info("%s moves from %s to %s: %s", cfg.node_id, self.tier, tier, choice.reason)
                previous, self.tier, self.tier_reason = self.tier, tier, choice.reason
                await self._workers.run(self._build_trainer)
                self._events.emit(TierChanged(cfg.node_id, tier, previous, choice.reason))

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
        return ((self.topics.proxy, 1), (self.topics.knowledge, 1), (self.topics.ack(self.config.node_id), 1))

    async def __aenter__(self) -> ClientNode:
        try:
            await self._workers.run(self._prepare)
        except BaseException:
            await self._workers.join()
            raise
        self.inputs.start(self._initial)
        self._initial = None
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
            keepalive=cfg.keepalive, on_link=link_listener(self._events, str(address))))
        tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._tasks.append(tasks.create_task(self._receive(), name=f"{cfg.node_id}-receive"))
        self._tasks.append(tasks.create_task(self._contribute(), name=f"{cfg.node_id}-train"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        self._workers.stop.set()
        try:
            if self.transport.connected.is_set():
                await self.transport.publish(self.topics.client_status(self.config.node_id),
                                             self._status_payload(False, "left"), retain=True, timeout=2)
        except Exception as err:  # noqa: BLE001 - best effort on the way out
            log.debug("final status not sent: %s", err)
        finally:
            assert self._stack is not None
            try:
                await self._stack.aclose()
            finally:
                await self._workers.join()
                self._events.close()

    async def done(self) -> None:
        """Returns once ``max_updates`` updates have been published (never when it is 0)."""
        await self._done.wait()

    async def _on_connect(self, transport: Transport) -> None:
        await transport.publish(self.topics.client_status(self.config.node_id),
                                self._status_payload(True, self.state), retain=True)

    async def _decoded(self) -> AsyncIterator[tuple[Incoming, Message]]:
        """Incoming messages that decode; the others are counted by reason and dropped."""
        async for msg in self.transport.messages():
            self.bytes_down += len(msg.payload)
            try:
                message = decode(msg.payload, self.limits)
            except MessageError as exc:
                self.rejects.error(exc, msg.topic)
                continue
            yield msg, message

    async def _receive(self) -> None:
        async for msg, message in self._decoded():
            if msg.topic == self.topics.proxy and isinstance(message, ProxySet):
                problem = self.inputs.adopt_proxy(message)
                if problem:
                    self.rejects.reject("spec_mismatch", problem, msg.topic)
                    continue
                self.proxy = message
                self._proxy_ready.set()
            elif msg.topic == self.topics.knowledge and isinstance(message, Knowledge):
                # Newest by arrival: a restarted server may legitimately resume at a lower version.
                previous = self.knowledge.version if self.knowledge else None
                self.knowledge = message
                if message.version != previous:
                    self._events.emit(KnowledgeChanged(self.config.node_id, message.version, previous))
                self._new_version.set()
            elif msg.topic == self.topics.ack(self.config.node_id) and isinstance(message, Ack):
                self._on_ack(message, msg.topic)
            else:
                self.rejects.reject("wrong_kind", type(message).__name__, msg.topic)

    def _on_ack(self, ack: Ack, topic: str) -> None:
        if ack.client != self.config.node_id or ack.update_seq not in self._sent_seqs:
            self.rejects.reject("unknown_ack", f"seq={ack.update_seq}", topic)
            return
        self._sent_seqs.remove(ack.update_seq)
        node = self.config.node_id
        if ack.accepted:
            self.updates_accepted += 1
            self._events.emit(UpdateAccepted(node, node, ack.update_seq, ack.version, ack.staleness))
        else:
            self.updates_rejected[ack.reason] += 1
            self._events.emit(UpdateRejected(node, node, ack.update_seq, ack.version, ack.reason))

    async def _wait_for_samples(self) -> None:
        """Hold off training until ``min_samples`` are held (an embedded client may start empty)."""
        async def waiting(state: str) -> None:
            self.state = state
            await self._publish_status()

        await self.inputs.wait_for(self.config.min_samples, waiting)
        if self.trainer is None:
            await self._workers.run(self._setup_model)
            assert self.tier is not None
            self._events.emit(TierChanged(self.config.node_id, self.tier, None, self.tier_reason))

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
            await self._wait_for_samples()
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
        seen = self.samples.seen
        x, y = self.samples.arrays()  # a snapshot: add_samples may go on while the thread trains
        label_counts = self.samples.label_counts()
        logits = await self._workers.run(self._train, x, y, proxy.inputs, teacher, ids)
        self._trained_on = (knowledge.version if knowledge else None, seen)
        await self._pace(started, teacher is not None)
        assert self.tier is not None
        update = Update(sender=cfg.node_id, seq=self._seq.next(), base_version=base_version, tier=self.tier,
                        n_samples=len(y), proxy_id=proxy.proxy_id, logits=logits, sample_ids=ids,
                        sent_at=time.time(), label_counts=label_counts if cfg.send_label_counts else None)
        payload = encode(update)
        if cfg.signing_key:
            payload = sign(payload, cfg.signing_key.encode())
        if self._state is not None:
            self._state.save_pending(payload, update.seq)
        self.state = "publishing"
        self._sent_seqs.append(update.seq)  # before publishing: the ack may beat the PUBACK
        await self.transport.publish(self.topics.update(cfg.node_id), payload, qos=1)
        if self._state is not None:
            self._state.clear_pending()  # PUBACK received: the broker holds it now
        self.updates_sent += 1
        self.bytes_up += len(payload)
        self._events.emit(UpdatePublished(cfg.node_id, update.seq, base_version, self.tier, len(y),
                                          len(payload)))
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
            assert isinstance(update, Update)
            self._sent_seqs.append(update.seq)
            await self.transport.publish(self.topics.update(self.config.node_id), payload, qos=1)
            self.updates_sent += 1
            self.bytes_up += len(payload)
        self._state.clear_pending()

    def _train(self, x: np.ndarray, y: np.ndarray, proxy_x: np.ndarray, teacher: np.ndarray | None,
               ids: np.ndarray | None) -> np.ndarray:
        from koala_async.learning.distill import predict_logits

        px = proxy_x.astype(np.float32)
        self.last_loss = self.trainer.train(x, y, px, teacher, stop=self._workers.stop)
        chosen = px if ids is None else px[ids]
        return predict_logits(self.trainer.model, chosen).astype(np.float16)

    def snapshot(self) -> dict[str, Any]:
        from koala_async.io.resources import peak_rss_bytes

        spec = self._trained_spec()
        return {
            "mode": self.config.mode,
            "tier": self.tier,
            "model_params": spec.params if spec else None,
            "train_flops_per_sample": spec.train_flops_per_sample if spec else None,
            "rss_peak_bytes": peak_rss_bytes(),
            "tier_reason": self.tier_reason,
            "resources": self.resources.summary(),
            "n_samples": len(self.samples),
            "samples_seen": self.samples.seen,
            "updates_sent": self.updates_sent,
            "updates_accepted": self.updates_accepted,
            "updates_rejected": dict(self.updates_rejected),
            "events_dropped": self._events.dropped,
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
