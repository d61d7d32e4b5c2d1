"""A client's local training task: what it learns from the server, what it trains, what it sends.

The client node (:mod:`koala_async.nodes.client`) runs the same lifecycle in every mode and hands the
mode-specific part to one of these (chosen in :mod:`koala_async.nodes.modes`):

- :class:`DistillTask` (KOALA, ``async`` and ``sync``): takes the proxy set and the server's knowledge,
  trains its small model (its tier) on private data plus distillation of the knowledge on proxy inputs,
  and sends an :class:`~koala_async.core.envelope.Update`: float16 logits on proxy samples.
- :class:`AveragingTask` (``fedavg``, ``fedbuff``): takes the global model, trains the server's large architecture
  from the global weights on private data, and sends :class:`~koala_async.core.envelope.Weights`.

``take`` adopts a message the task subscribed to (returning a reject reason, or None); ``train`` runs
in a worker thread and returns the message to send, with ``seq`` left for the node to fill in.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from koala_async.core.envelope import Knowledge, Message, ProxySet, Update, Weights
from koala_async.core.resources import ResourceSnapshot
from koala_async.core.tiering import TierSpec, choose_tier, next_tier
from koala_async.core.topics import Topics
from koala_async.core.weights import check_weights

if TYPE_CHECKING:
    from koala_async.learning.models import InputSpec
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

    def subscriptions(self) -> tuple[str, ...]:
        return (self.topics.proxy, self.topics.knowledge)

    @property
    def kinds(self) -> dict[str, str]:
        """The message kind each subscribed topic carries."""
        return {self.topics.proxy: "proxy", self.topics.knowledge: "knowledge"}

    @property
    def version(self) -> int | None:
        return self.knowledge.version if self.knowledge is not None else None

    @property
    def in_rounds(self) -> bool:
        """Rounds: configured, or announced by the server's knowledge."""
        return self.config.mode.rounds or (self.knowledge is not None and self.knowledge.mode != "async")

    def take(self, topic: str, message: Message, inputs: ClientInputs) -> str | None:
        if topic == self.topics.proxy and isinstance(message, ProxySet):
            problem = inputs.adopt_proxy(message)
            if problem:
                return "spec_mismatch"
            self.proxy = message
            self.ready.set()
            return None
        if topic == self.topics.knowledge and isinstance(message, Knowledge):
            # Newest by arrival: a restarted server may legitimately resume at a lower version.
            self.knowledge = message
            self.changed.set()
            return None
        return "wrong_kind"

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

        cfg, proxy, knowledge = self.config, self.proxy, self.knowledge
        assert proxy is not None and self.tier is not None
        teacher, base_version = None, 0
        if knowledge is not None and knowledge.proxy_id == proxy.proxy_id:
            base_version = knowledge.version
            if knowledge.logits is not None and len(knowledge.logits) == len(proxy.inputs):
                teacher = knowledge.logits
        ids = None
        if cfg.proxy_subset < 1:
            count = max(1, int(round(len(proxy.inputs) * cfg.proxy_subset)))
            ids = np.sort(np.asarray(self._rng.sample(range(len(proxy.inputs)), count), dtype=np.uint32))
        px = proxy.inputs.astype(np.float32)
        before = self.trainer.epochs_done
        self.last_loss = self.trainer.train(x, y, px, teacher, stop=stop)
        self.epochs_done += self.trainer.epochs_done - before
        self._after_training(self.trainer.model, self.tier, cfg.model_out)
        logits = predict_logits(self.trainer.model, px if ids is None else px[ids]).astype(np.float16)
        return Update(sender=cfg.node_id, seq=0, base_version=base_version, tier=self.tier, n_samples=len(y),
                      proxy_id=proxy.proxy_id, logits=logits, sample_ids=ids, sent_at=time.time(),
                      label_counts=label_counts if cfg.send_label_counts else None)

    def _after_training(self, model: Any, tier: str, path: str | None) -> None:
        """Evaluate on the held-out private samples; write the model where the config says."""
        if self.holdout is not None:
            from koala_async.learning.distill import accuracy

            self.holdout_accuracy = accuracy(model, *self.holdout)
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

    @property
    def version(self) -> int | None:
        return self.global_model.base_version if self.global_model is not None else None

    @property
    def in_rounds(self) -> bool:
        """FedAvg trains once per round; FedBuff whenever ready."""
        return self.config.mode.rounds

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
        """Load the global weights, train ``train.epochs`` local epochs, return the new weights."""
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
        self._model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in base.params.items()})
        # A fresh optimizer per round, as in FedAvg.
        self.trainer = LocalTrainer(self._model, TrainConfig(epochs=t.epochs, batch_size=t.batch_size,
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
