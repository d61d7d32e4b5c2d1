"""A client's local training task: what it learns from the server, what it trains, what it sends.

The client node (:mod:`koala_async.nodes.client`) runs the same lifecycle in every mode and hands the
mode-specific part to one of these (chosen in :mod:`koala_async.nodes.modes`):

- :class:`DistillTask` (KOALA, ``async`` and ``sync``): takes the proxy set (its manifest; the chunks
  or a local file through :mod:`~koala_async.nodes.proxy_sync`) and the server's knowledge, trains its
  small model (its tier) on private data plus distillation of the knowledge on proxy inputs,
  and sends an :class:`~koala_async.core.envelope.Update`: float16 logits on proxy samples.
- :class:`AveragingTask` (``fedavg``, ``fedbuff``): takes the global model, trains the server's large architecture
  from the global weights on private data, and sends :class:`~koala_async.core.envelope.Weights`.

``take`` adopts a message the task subscribed to (returning a reject reason, or None); ``train`` runs
in a worker thread and returns the message to send, with ``seq`` left for the node to fill in;
``background`` is the task's long-lived coroutine beside the node's (the proxy transfer).
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from koala_async.core.envelope import Knowledge, Message, ProxyManifest, ProxySet, Update, Weights
from koala_async.core.resources import ResourceSnapshot
from koala_async.core.tiering import TierSpec, choose_tier, next_tier
from koala_async.core.topics import Topics
from koala_async.core.weights import check_weights, conform
from koala_async.nodes.proxy_sync import FetchLink, ProxySync

if TYPE_CHECKING:
    from koala_async.core.knowledge_gate import KnowledgeGate
    from koala_async.core.rejects import RejectCounter
    from koala_async.learning.models import InputSpec
    from koala_async.learning.standardize import Standardizer
    from koala_async.nodes.client_inputs import ClientInputs
    from koala_async.nodes.config import ClientConfig


class DistillTask:
    waiting = "waiting for proxy set"  # what the client reports before it can train

    def __init__(self, config: ClientConfig, topics: Topics) -> None:
        self.config = config
        self.topics = topics
        self.proxy: ProxySet | None = None
        self.knowledge: Knowledge | None = None
        self.tier: str | None = None
        self.tier_reason = ""
        self.trainer: Any = None
        self.catalog: tuple[TierSpec, ...] = ()
        self.ready = asyncio.Event()  # set once it can train: the proxy set is here
        self.changed = asyncio.Event()  # set on every new version
        self.last_loss = float("nan")
        self.epochs_done = 0  # local epochs trained, over all updates (the local-only reference matches it)
        self.holdout: tuple[np.ndarray, np.ndarray] | None = None  # set by the node (client_inputs.py)
        self.holdout_accuracy: float | None = None
        self._rng = random.Random(f"{config.seed}-{config.node_id}-ids")
        self.sync = ProxySync(config, topics)  # the proxy set: manifest -> chunks (or proxy_path) -> inputs
        self._inputs: ClientInputs | None = None  # where its shard came from (the split check)
        self._checked: tuple[str, str] | None = None  # (server split fingerprint, refusal) last worked out
        self._scale: tuple[str, Standardizer | None] | None = None  # (proxy id, its statistics)

    def subscriptions(self) -> tuple[str, ...]:
        return (self.topics.proxy, self.topics.knowledge)

    @property
    def kinds(self) -> dict[str, str]:
        """The message kind each subscribed topic carries."""
        return {self.topics.proxy: "proxy_manifest", self.topics.knowledge: "knowledge"}

    async def background(self, link: FetchLink, gate: KnowledgeGate, rejects: RejectCounter,
                         inputs: ClientInputs) -> None:
        """Obtain each proxy set the server announces; the task is ready once the first is here."""

        def adopt(proxy: ProxySet) -> None:
            self.proxy = proxy
            self.ready.set()

        await self.sync.run(link, gate, rejects, adopt)

    @property
    def bytes_fetched(self) -> int:
        """Bytes received beside the node's main link (the proxy set's chunks)."""
        return self.sync.bytes_in

    @property
    def version(self) -> int | None:
        return self.knowledge.version if self.knowledge is not None else None

    @property
    def in_rounds(self) -> bool:
        """Rounds: configured, or announced by the server's knowledge."""
        return self.config.mode.rounds or (self.knowledge is not None and self.knowledge.mode != "async")

    def take(self, topic: str, message: Message, inputs: ClientInputs) -> str | None:
        self._inputs = inputs
        if topic == self.topics.proxy and isinstance(message, ProxyManifest):
            if inputs.adopt_proxy(message.shape[1:], message.num_classes):  # before fetching megabytes
                return "spec_mismatch"
            self.sync.want(message)
            return None
        if topic == self.topics.knowledge and isinstance(message, Knowledge):
            # Newest by arrival: a restarted server may legitimately resume at a lower version.
            self.knowledge = message
            self.changed.set()
            return None
        return "wrong_kind"

    def refusal(self) -> str:
        """Why this client must not train now ("" if it may): its shard was derived from another split
        than the server's (blocking the first time per server split: see learning/split_guard.py)."""
        knowledge, inputs = self.knowledge, self._inputs
        server = knowledge.split if knowledge is not None else None
        if server is None or inputs is None:
            return ""
        if self._checked is None or self._checked[0] != server.fingerprint:
            from koala_async.learning.split_guard import refusal

            self._checked = (server.fingerprint, refusal(server, inputs.split, inputs.dataset_ids))
        return self._checked[1]

    def standardizer(self, proxy: ProxySet) -> Standardizer | None:
        """The proxy set's feature statistics (vectors only), as the server computes them."""
        if self._scale is None or self._scale[0] != proxy.proxy_id:
            from koala_async.learning.standardize import Standardizer

            self._scale = (proxy.proxy_id, Standardizer.fit(proxy.inputs))  # images: None, no copy
        return self._scale[1]

    def setup(self, spec: InputSpec, resources: ResourceSnapshot, samples_per_epoch: int) -> None:
        """Choose the tier and build the small model (blocking; once the input spec is known)."""
        from koala_async.learning.catalog import tier_catalog
        from koala_async.learning.models import client_tiers

        cfg = self.config
        self.catalog = tier_catalog(spec)
        if cfg.tier == "auto":
            choice = choose_tier(resources, self.catalog, cfg.tier_policy, samples_per_epoch)
            self.tier, self.tier_reason = choice.tier, choice.reason
        else:
            self.tier = cfg.tier or client_tiers(spec.kind)[1]
            self.tier_reason = "configured" if cfg.tier else "default"
        self.build(spec)

    def build(self, spec: InputSpec) -> None:
        from koala_async.learning.distill import LocalTrainer, TrainConfig
        from koala_async.learning.models import build_model

        cfg, t = self.config, self.config.train
        assert self.tier is not None
        self.trainer = LocalTrainer(build_model(self.tier, spec, seed=cfg.seed + cfg.shard),
                                    TrainConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr,
                                                kd_weight=t.kd_weight), seed=cfg.seed + cfg.shard)

    def retier(self, resources: ResourceSnapshot, samples_per_epoch: int) -> str | None:
        """The tier to move to after a resource drop, or None (only ``tier = "auto"`` moves)."""
        if self.config.tier != "auto" or self.tier is None:
            return None
        choice = choose_tier(resources, self.catalog, self.config.tier_policy, samples_per_epoch)
        tier = next_tier(self.tier, choice, self.catalog)
        if tier == self.tier:
            return None
        self.tier, self.tier_reason = tier, choice.reason
        return tier

    def trained_spec(self) -> TierSpec | None:
        """The measured architecture this client trains (None for one outside the catalog)."""
        return next((t for t in self.catalog if t.name == self.tier), None)

    def train(self, x: np.ndarray, y: np.ndarray, label_counts: np.ndarray | None,
              stop: threading.Event) -> Update:
        from koala_async.learning.distill import predict_logits
        from koala_async.learning.standardize import model_inputs

        cfg, proxy, knowledge = self.config, self.proxy, self.knowledge
        assert proxy is not None and self.tier is not None
        teacher, base_version, scheduled, temperature = None, 0, None, None
        if knowledge is not None and knowledge.proxy_id == proxy.proxy_id:
            base_version, temperature = knowledge.version, knowledge.temperature  # the server's T
            if knowledge.ids is not None and len(knowledge.ids) and knowledge.ids.max() < len(proxy.inputs):
                scheduled = knowledge.ids  # the server's subset for this version: distill on it, label it
            rows = len(proxy.inputs) if scheduled is None else len(scheduled)
            if knowledge.logits is not None and len(knowledge.logits) == rows:
                teacher = knowledge.logits
        # In its own dtype (uint8 pixels are converted per minibatch): never a float32 copy of it all.
        pool = proxy.inputs if scheduled is None else proxy.inputs[scheduled]
        ids, rows_out = scheduled, None
        if cfg.proxy_subset < 1:
            count = max(1, round(len(pool) * cfg.proxy_subset))
            rows_out = np.sort(np.asarray(self._rng.sample(range(len(pool)), count), dtype=np.uint32))
            ids = rows_out if scheduled is None else scheduled[rows_out]
        scale = self.standardizer(proxy)  # vectors: by the proxy set's statistics, as the server does
        pool = model_inputs(pool, scale)  # images: unchanged (uint8 pixels stay uint8)
        before = self.trainer.epochs_done
        self.last_loss = self.trainer.train(model_inputs(x, scale), y, pool, teacher, stop=stop,
                                            temperature=temperature)
        self.epochs_done += self.trainer.epochs_done - before
        self._after_training(self.trainer.model, self.tier, cfg.model_out, scale)
        logits = predict_logits(self.trainer.model, pool if rows_out is None else pool[rows_out]).astype(np.float16)
        return Update(sender=cfg.node_id, seq=0, base_version=base_version, tier=self.tier, n_samples=len(y),
                      proxy_id=proxy.proxy_id, logits=logits, sample_ids=ids, sent_at=time.time(),
                      label_counts=label_counts if cfg.send_label_counts else None)

    def _after_training(self, model: Any, tier: str, path: str | None, scale: Standardizer | None) -> None:
        """Evaluate on the held-out private samples (scaled as training's); write the model where the config says."""
        if self.holdout is not None:
            from koala_async.learning.distill import accuracy
            from koala_async.learning.standardize import model_inputs

            self.holdout_accuracy = accuracy(model, model_inputs(self.holdout[0], scale), self.holdout[1])
        if path:
            from koala_async.learning.model_file import save_model

            save_model(model, tier, path)

    def still_valid(self, message: Message) -> str:
        """Why an update left pending by a crash must not be sent now ("" if it may)."""
        if not isinstance(message, Update):
            return "not an update"
        assert self.proxy is not None
        if message.proxy_id != self.proxy.proxy_id:
            return "built on another proxy set"
        current = self.version or 0
        if current - message.base_version > self.config.pending_max_staleness:
            return (f"stale: built on version {message.base_version}, knowledge is at {current} "
                    f"(> {self.config.pending_max_staleness} behind)")
        return ""


class AveragingTask:
    """FedAvg: train the server's large model from the global weights, send full weights."""

    waiting = "waiting for the global model"

    def __init__(self, config: ClientConfig, topics: Topics) -> None:
        self.config = config
        self.topics = topics
        self.global_model: Weights | None = None
        self.knowledge = None
        self.proxy = None
        self.tier: str | None = None  # the server's architecture, once it is known
        self.tier_reason = "fedavg: the server's model"
        self.trainer: Any = None
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()
        self.last_loss = float("nan")
        self.epochs_done = 0
        self.trainings = 0
        self.holdout: tuple[np.ndarray, np.ndarray] | None = None
        self.holdout_accuracy: float | None = None
        self.spec: InputSpec | None = None
        self._model: Any = None
        self._layouts: dict[str, dict[str, tuple[int, ...]] | None] = {}

    def subscriptions(self) -> tuple[str, ...]:
        return (self.topics.model,)

    @property
    def kinds(self) -> dict[str, str]:
        return {self.topics.model: "weights"}

    async def background(self, link: FetchLink, gate: KnowledgeGate, rejects: RejectCounter,
                         inputs: ClientInputs) -> None:
        """FedAvg needs no proxy set: nothing runs beside the node."""

    bytes_fetched = 0

    @property
    def version(self) -> int | None:
        return self.global_model.base_version if self.global_model is not None else None

    @property
    def in_rounds(self) -> bool:
        """FedAvg trains once per round; FedBuff whenever ready."""
        return self.config.mode.rounds

    def refusal(self) -> str:
        return ""  # the global model carries no split to check against

    def take(self, topic: str, message: Message, inputs: ClientInputs) -> str | None:
        if topic != self.topics.model or not isinstance(message, Weights):
            return "wrong_kind"
        spec = inputs.spec()
        layout = self._layout(message.model, spec) if spec is not None else None
        reason = "wrong_model" if layout is None else check_weights(message.params, layout)
        if reason is not None:
            return reason
        self.global_model = message
        self.ready.set()
        self.changed.set()
        return None

    def _layout(self, name: str, spec: InputSpec) -> dict[str, tuple[int, ...]] | None:
        """Parameter name -> shape of architecture ``name`` for this data (None: not buildable here)."""
        if name not in self._layouts:
            from koala_async.learning.models import build_model

            try:
                # A name from the network: never an import string (that would import what a server says).
                model = build_model(name, spec, seed=0, allow_imports=False)
            except (KeyError, ValueError):
                self._layouts[name] = None
            else:
                self._layouts[name] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        return self._layouts[name]

    def setup(self, spec: InputSpec, resources: ResourceSnapshot, samples_per_epoch: int) -> None:
        self.spec = spec

    def retier(self, resources: ResourceSnapshot, samples_per_epoch: int) -> str | None:
        return None

    def build(self, spec: InputSpec) -> None:
        self.spec = spec

    def trained_spec(self) -> TierSpec | None:
        if not self.tier or self.spec is None:
            return None
        from koala_async.learning.catalog import large_spec

        return large_spec(self.spec, self.tier)

    def train(self, x: np.ndarray, y: np.ndarray, label_counts: np.ndarray | None,
              stop: threading.Event) -> Weights:
        """Load the global weights, train ``train.fedavg_epochs`` (else ``epochs``) local epochs, return
        the new weights."""
        import torch

        from koala_async.learning.catalog import large_spec
        from koala_async.learning.distill import LocalTrainer, TrainConfig
        from koala_async.learning.models import build_model

        cfg, t, base, spec = self.config, self.config.train, self.global_model, self.spec
        assert base is not None and spec is not None
        if self._model is None or self.tier != base.model:
            self._model = build_model(base.model, spec, seed=cfg.seed)
            large_spec(spec, base.model)  # measured once here, off the event loop
            self.tier = base.model
        layout = self._layouts[base.model]  # take() measured it before accepting the model
        assert layout is not None
        self._model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in conform(base.params, layout).items()})
        # A fresh optimizer per round, as in FedAvg.
        epochs = t.fedavg_epochs or t.epochs
        self.trainer = LocalTrainer(self._model, TrainConfig(epochs=epochs, batch_size=t.batch_size,
                                                             lr=t.fedavg_lr, kd_weight=0.0),
                                    seed=cfg.seed + cfg.shard + 7919 * base.base_version + 104729 * self.trainings)
        self.trainings += 1  # FedBuff may train twice from one version: a new shuffle each time
        self.last_loss = self.trainer.train(x, y, stop=stop)
        self.epochs_done += self.trainer.epochs_done
        if self.holdout is not None:
            from koala_async.learning.distill import accuracy

            self.holdout_accuracy = accuracy(self._model, *self.holdout)
        params = {k: v.detach().numpy().astype(np.float32, copy=True) for k, v in self._model.state_dict().items()}
        return Weights(sender=cfg.node_id, seq=0, base_version=base.base_version, model=base.model,
                       n_samples=len(y), params=params, sent_at=time.time())

    def still_valid(self, message: Message) -> str:
        if not isinstance(message, Weights):
            return "not weights"
        if self.config.mode.rounds and message.base_version != self.version:
            return "not for the current round"
        if (self.version or 0) - message.base_version > self.config.pending_max_staleness:
            return f"stale: built on version {message.base_version}, the global model is at {self.version}"
        return ""


LocalTask = DistillTask | AveragingTask


def task_summary(task: DistillTask | AveragingTask) -> dict[str, Any]:
    """What a client's status says about its local training: the model it trains, its cost, progress."""
    spec = task.trained_spec()
    loss = task.last_loss
    return {"tier": task.tier, "tier_reason": task.tier_reason, "model_params": spec.params if spec else None,
            "train_flops_per_sample": spec.train_flops_per_sample if spec else None,
            "knowledge_version": task.version or 0, "last_loss": None if math.isnan(loss) else round(loss, 4),
            "epochs_done": task.epochs_done, "holdout_accuracy": task.holdout_accuracy}
