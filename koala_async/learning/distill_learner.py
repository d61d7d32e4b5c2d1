"""KOALA's server learner: fuse client logits into soft targets, distill the large model on them.

Per batch of accepted updates (:meth:`DistillLearner.advance`, in a worker thread):

1. each update's tier trust is estimated against the large model's current logits
   (:mod:`koala_async.core.trust`) and its logits join the fusion (:mod:`koala_async.core.fusion`)
   with the weight of its staleness, size and trust; then the clients that departed (goodbye, last
   will) since the last batch, and those silent for ``max_silent_versions``, are forgotten;
2. the fused targets (one soft label per covered proxy sample) are distilled into the large model for
   the steps the pacing granted, damped by staleness (each arrival buys ``distill_steps * w(s)``
   steps: :func:`~koala_async.core.staleness.damped_steps`), within the latency budget
   ``max_distill_seconds``;
3. the large model's logits on the proxy set become the knowledge of the new version, and it is
   evaluated on the validation split (the best version is kept) and the test split
   (:mod:`koala_async.learning.evaluation`).

One temperature: the server's ``temperature`` softens the fused client logits, the distillation, and
travels in the knowledge to every client's forward distillation. Vector inputs are standardized with
the proxy set's statistics, as every client does (:mod:`koala_async.learning.standardize`).

Published, retained: the proxy set (on every connect, raw) and the knowledge (on every version, with
the split's fingerprint that clients check their shards against: :mod:`koala_async.core.splits`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from koala_async.core.admission import AdmissionContext, Decision, admit
from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import Knowledge, Message, ProxySet, Update
from koala_async.core.fusion import Fusion
from koala_async.core.staleness import damped_steps
from koala_async.core.topics import Topics
from koala_async.core.trust import TierTrust
from koala_async.learning.learner import ServerData, load_server_data

if TYPE_CHECKING:
    from koala_async.core.server_state import Arrival
    from koala_async.nodes.config import ServerConfig

log = logging.getLogger(__name__)


class DistillLearner:
    def __init__(self, config: ServerConfig, topics: Topics, next_seq: Any) -> None:
        self.config = config
        self.topics = topics
        self.next_seq = next_seq  # () -> int: the server's message sequence numbers
        self.model_name = ""
        self.knowledge_logits: np.ndarray | None = None
        self.trust = TierTrust(config.trust)
        self.steps_skipped = 0
        self.forgotten = 0  # contributions dropped for departure or silence
        # The distill thread and checkpoint captures take turns on the model.
        self.lock = threading.Lock()
        self._ctx: AdmissionContext | None = None

    # -- setup ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        from koala_async.learning import data as datasets
        from koala_async.learning.distill import Distiller
        from koala_async.learning.evaluation import VersionScores
        from koala_async.learning.models import build_model, default_large

        cfg = self.config
        self.data: ServerData = load_server_data(cfg)
        self.spec = self.data.spec
        self.proxy_x = self.data.proxy_x  # published as is
        self.proxy_inputs = self.data.proxy_inputs  # what the model sees (standardized vectors)
        self.proxy_id = datasets.proxy_id(self.proxy_x)
        self.model_name = cfg.large_model or default_large(self.spec.kind)
        self.distiller = Distiller(build_model(self.model_name, self.spec, seed=cfg.seed), lr=cfg.lr,
                                   temperature=cfg.temperature, batch_size=cfg.batch_size, seed=cfg.seed,
                                   augment=cfg.augment)
        self.fusion = Fusion(len(self.proxy_x), self.spec.num_classes, cfg.fusion, cfg.staleness)
        self.scores = VersionScores(self.data.validation, self.data.test)
        self.scores.evaluate(self.distiller.model, 0)

    @property
    def test_accuracy(self) -> float:
        return self.scores.test_accuracy

    # -- the protocol --------------------------------------------------------------------------

    def admit(self, message: Message, topic_sender: str | None, version: int, seen: SeqWindow,
              now_ms: int | None = None) -> Decision | None:
        if not isinstance(message, Update):
            return None
        ctx = self._ctx
        if ctx is None or ctx.version != version:  # the rest is fixed once the proxy set is
            cfg = self.config
            ctx = self._ctx = AdmissionContext(version=version, proxy_id=self.proxy_id, n_proxy=len(self.proxy_x),
                                               num_classes=self.spec.num_classes, policy=cfg.staleness,
                                               accepted_tiers=cfg.accepted_tiers)
        return admit(message, topic_sender, ctx, seen, now_ms)

    def advance(self, batch: list[Arrival], version: int, steps: int, stop: threading.Event,
                departed: Sequence[str] = ()) -> None:
        from koala_async.learning.distill import predict_logits

        fused: list[tuple[str, float]] = []  # (sender, w(s)) of each arrival fused
        for arrival in batch:
            update: Update = arrival.message
            trust = self.trust.observe(update.tier, update.logits, update.sample_ids, self.knowledge_logits)
            try:
                self.fusion.add(update.sender, update.tier, update.base_version, update.logits, update.sample_ids,
                                n_samples=update.n_samples, trust=trust, label_counts=update.label_counts,
                                version=version)
            except ValueError as exc:  # admission checked shapes and ids; fusion refuses what it cannot bound
                log.warning("update %s/%d not fused: %s", update.sender, update.seq, exc)
                continue
            fused.append((update.sender, self.fusion.step_scale(max(version - update.base_version, 0))))
        self.forget(departed, version)
        targets, mask = self.fusion.targets(version)
        # FedAsync damping: each arrival still held buys distill_steps * w(s) steps (core/staleness.py)
        steps = damped_steps(steps, [scale for sender, scale in fused if sender in self.fusion.contributions])
        with self.lock:
            before = self.distiller.steps_done
            self.distiller.distill(self.proxy_inputs, targets, mask, steps, self.config.max_distill_seconds, stop)
            if stop.is_set():  # shutting down: the fused targets are kept, the rest can wait
                return
            if mask.any():
                self.steps_skipped += steps - (self.distiller.steps_done - before)
            self.knowledge_logits = predict_logits(self.distiller.model, self.proxy_inputs).astype(np.float16)
            self.scores.evaluate(self.distiller.model, version + 1)

    def forget(self, departed: Sequence[str], version: int) -> list[str]:
        """Drop the contributions of ``departed`` clients and of those silent for more than
        ``max_silent_versions`` at ``version``; returns who was forgotten (in the learner's thread)."""
        gone = [sender for sender in departed if self.fusion.forget(sender)]
        gone += self.fusion.evict_silent(version, self.config.max_silent_versions)
        if gone:
            self.forgotten += len(gone)
            log.info("version %d: forgot %d departed or silent clients (%s)", version, len(gone),
                     ", ".join(gone[:5]) + (" ..." if len(gone) > 5 else ""))
        return gone

    def retained(self, version: int, full: bool) -> list[tuple[str, Message]]:
        cfg = self.config
        knowledge = Knowledge(sender=cfg.node_id, seq=self.next_seq(), version=version, proxy_id=self.proxy_id,
                              num_classes=self.spec.num_classes, temperature=cfg.temperature,
                              logits=self.knowledge_logits, accepted_tiers=cfg.accepted_tiers,
                              sent_at=time.time(), mode=cfg.mode.value, split=self.data.split)
        if not full:
            return [(self.topics.knowledge, knowledge)]
        proxy = ProxySet(sender=cfg.node_id, seq=self.next_seq(), proxy_id=self.proxy_id, inputs=self.proxy_x,
                         num_classes=self.spec.num_classes, sent_at=time.time())
        return [(self.topics.proxy, proxy), (self.topics.knowledge, knowledge)]

    def snapshot(self) -> dict[str, Any]:
        return {"large_model": self.model_name, **self.scores.snapshot(), "tier_trust": self.trust.as_dict(),
                "distill_steps_skipped": self.steps_skipped, "contributions": len(self.fusion.contributions),
                "contributions_forgotten": self.forgotten}

    # -- checkpoints ---------------------------------------------------------------------------

    def identity(self) -> dict[str, str]:
        return {"model_name": self.model_name, "proxy_id": self.proxy_id}

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {
                "model": {k: v.detach().clone() for k, v in self.distiller.model.state_dict().items()},
                "optimizer": self.distiller.optimizer.state_dict(),
                "steps_done": self.distiller.steps_done, "steps_skipped": self.steps_skipped,
                "knowledge_logits": self.knowledge_logits, "scores": self.scores.state(),
                "fusion": self.fusion.to_state(), "forgotten": self.forgotten,
                "trust": {"agreement_ema": dict(self.trust.agreement_ema),
                          "observations": dict(self.trust.observations)},
            }

    def restore(self, state: dict[str, Any]) -> None:
        self.distiller.model.load_state_dict(state["model"])
        self.distiller.optimizer.load_state_dict(state["optimizer"])
        self.distiller.steps_done = int(state["steps_done"])
        self.steps_skipped = int(state.get("steps_skipped", 0))
        logits = state["knowledge_logits"]
        self.knowledge_logits = None if logits is None else np.asarray(logits, dtype=np.float16)
        if "scores" in state:
            self.scores.restore(state["scores"])
        else:  # a checkpoint from before validation: its test score only
            self.scores.test_accuracy = float(state["test_accuracy"])
        self.forgotten = int(state.get("forgotten", 0))
        self.fusion = Fusion.from_state(state["fusion"], len(self.proxy_x), self.spec.num_classes,
                                        self.config.fusion, self.config.staleness)
        self.trust.agreement_ema.update(state["trust"]["agreement_ema"])
        self.trust.observations.update(state["trust"]["observations"])

