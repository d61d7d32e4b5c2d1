"""KOALA's server learner: fuse client logits into soft targets, distill the large model on them.

Per batch of accepted updates (:meth:`DistillLearner.advance`, in a worker thread):

1. each update's tier trust is estimated against the large model's current logits
   (:mod:`koala_async.core.trust`) and its logits join the fusion (:mod:`koala_async.core.fusion`)
   with the weight of its staleness, size and trust;
2. the fused targets (one soft label per covered proxy sample) are distilled into the large model for
   the steps the pacing granted, within the latency budget ``max_distill_seconds``;
3. the large model's logits on the proxy set become the knowledge of the new version, and it is
   evaluated on the held-out test split.

Published, retained: the proxy set (on every connect) and the knowledge (on every version).

Bounded whatever the number of client ids: the fusion keeps the contributions of at most
``max_contributions`` clients (the least recently heard from are dropped first), so a version's
fusion time and a checkpoint's size do not grow with a flood of made-up ids; and what the learner
adds to the server's status is computed here, in the learner's thread, once per version, and
lists at most ``MAX_LISTED_TIERS`` tiers (tier names come from the network), so a heartbeat on the
event loop only copies it.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from koala_async.core.admission import AdmissionContext, Decision, admit
from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import Knowledge, Message, ProxySet, Update
from koala_async.core.fusion import Fusion
from koala_async.core.topics import Topics
from koala_async.core.trust import TierTrust
from koala_async.learning.fusion_state import pack_contributions, unpack_contributions
from koala_async.learning.learner import ServerData, load_server_data

if TYPE_CHECKING:
    from koala_async.core.server_state import Arrival
    from koala_async.nodes.config import ServerConfig

MAX_LISTED_TIERS = 32  # tier_trust entries in the status: the most observed tiers


def trust_summary(trust: TierTrust, limit: int = MAX_LISTED_TIERS) -> dict[str, float]:
    """The trust of the ``limit`` most observed tiers (with :class:`TierTrust`'s own rule)."""
    tiers = list(trust.agreement_ema)
    if len(tiers) > limit:
        tiers = sorted(tiers, key=lambda t: trust.observations.get(t, 0), reverse=True)[:limit]
    return {t: round(trust.trust(t), 4) for t in sorted(tiers)}


class DistillLearner:
    def __init__(self, config: ServerConfig, topics: Topics, next_seq: Any) -> None:
        self.config = config
        self.topics = topics
        self.next_seq = next_seq  # () -> int: the server's message sequence numbers
        self.model_name = ""
        self.test_accuracy = float("nan")
        self.knowledge_logits: np.ndarray | None = None
        self.trust = TierTrust(config.trust)
        self.steps_skipped = 0
        self.max_contributions = config.max_contributions
        self.contributions_dropped = 0  # contributions forgotten past max_contributions
        self._summary: dict[str, Any] = {}  # the status part, refreshed by the thread that learns
        # The distill thread and checkpoint captures take turns on the model and the fusion.
        self.lock = threading.Lock()
        self._ctx: AdmissionContext | None = None

    # -- setup ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        from koala_async.learning import data as datasets
        from koala_async.learning.distill import Distiller
        from koala_async.learning.models import build_model, default_large

        cfg = self.config
        self.data: ServerData = load_server_data(cfg)
        self.spec = self.data.spec
        self.proxy_x = self.data.proxy_x
        self.proxy_id = datasets.proxy_id(self.proxy_x)
        self.model_name = cfg.large_model or default_large(self.spec.kind)
        self.distiller = Distiller(build_model(self.model_name, self.spec, seed=cfg.seed), lr=cfg.lr,
                                   temperature=cfg.temperature, batch_size=cfg.batch_size, seed=cfg.seed,
                                   augment=cfg.augment)
        self.fusion = Fusion(len(self.proxy_x), self.spec.num_classes, cfg.fusion, cfg.staleness)
        self.test_accuracy = self.evaluate()
        self._summarise()

    def evaluate(self) -> float:
        from koala_async.learning.distill import accuracy

        return accuracy(self.distiller.model, self.data.test.x, self.data.test.y)

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

    def advance(self, batch: list[Arrival], version: int, steps: int, stop: threading.Event) -> None:
        from koala_async.learning.distill import predict_logits

        # The whole batch joins the fusion under the lock, even when stopping: its arrivals have left
        # the server's pending list, so the checkpoint written on the way out (which waits for the lock)
        # must find every one of them in the fusion.
        with self.lock:
            for arrival in batch:
                update: Update = arrival.message
                trust = self.trust.observe(update.tier, update.logits, update.sample_ids, self.knowledge_logits)
                weight = self.fusion.arrival_weight(version - update.base_version, update.n_samples, trust)
                self._fuse(update, weight)
            if stop.is_set():  # shutting down: the fused contributions are kept, the rest can wait
                return
            targets, mask = self.fusion.targets(version)
            before = self.distiller.steps_done
            self.distiller.distill(self.proxy_x, targets, mask, steps, self.config.max_distill_seconds, stop)
            if stop.is_set():
                return
            if mask.any():
                self.steps_skipped += steps - (self.distiller.steps_done - before)
            self.knowledge_logits = predict_logits(self.distiller.model, self.proxy_x).astype(np.float16)
            self.test_accuracy = self.evaluate()
            self._summarise()

    def _fuse(self, update: Update, weight: float) -> None:
        """Make ``update`` its sender's contribution, the most recent one; forget the least recent
        contributions past ``max_contributions``."""
        contributions = self.fusion.contributions
        contributions.pop(update.sender, None)  # re-added last: the dict stays ordered by arrival
        self.fusion.add(update.sender, update.tier, update.base_version, update.logits, update.sample_ids,
                        weight, update.label_counts)
        while len(contributions) > self.max_contributions:
            del contributions[next(iter(contributions))]
            self.contributions_dropped += 1

    def _summarise(self) -> None:
        self._summary = {"large_model": self.model_name, "test_accuracy": self.test_accuracy,
                         "tier_trust": trust_summary(self.trust), "tiers_seen": len(self.trust.agreement_ema),
                         "distill_steps_skipped": self.steps_skipped, "distill_steps_done": self.distiller.steps_done,
                         "contributions": len(self.fusion.contributions),
                         "contributions_dropped": self.contributions_dropped}

    def retained(self, version: int, full: bool) -> list[tuple[str, Message]]:
        cfg = self.config
        knowledge = Knowledge(sender=cfg.node_id, seq=self.next_seq(), version=version, proxy_id=self.proxy_id,
                              num_classes=self.spec.num_classes, temperature=cfg.temperature,
                              logits=self.knowledge_logits, accepted_tiers=cfg.accepted_tiers,
                              sent_at=time.time(), mode=cfg.mode.value)
        if not full:
            return [(self.topics.knowledge, knowledge)]
        proxy = ProxySet(sender=cfg.node_id, seq=self.next_seq(), proxy_id=self.proxy_id, inputs=self.proxy_x,
                         num_classes=self.spec.num_classes, sent_at=time.time())
        return [(self.topics.proxy, proxy), (self.topics.knowledge, knowledge)]

    def snapshot(self) -> dict[str, Any]:
        """The learner's part of the server status, as of its last version (cheap: no per-tier work)."""
        return dict(self._summary)

    # -- checkpoints ---------------------------------------------------------------------------

    def identity(self) -> dict[str, str]:
        return {"model_name": self.model_name, "proxy_id": self.proxy_id}

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {
                "model": {k: v.detach().clone() for k, v in self.distiller.model.state_dict().items()},
                "optimizer": self.distiller.optimizer.state_dict(),
                "steps_done": self.distiller.steps_done, "steps_skipped": self.steps_skipped,
                "knowledge_logits": self.knowledge_logits, "test_accuracy": self.test_accuracy,
                "fusion": pack_contributions(list(self.fusion.contributions.values()), self.spec.num_classes),
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
        self.test_accuracy = float(state["test_accuracy"])
        for contribution in unpack_contributions(state["fusion"])[-self.max_contributions:]:  # oldest first
            self.fusion.contributions[contribution.sender] = contribution
        self.trust.agreement_ema.update(state["trust"]["agreement_ema"])
        self.trust.observations.update(state["trust"]["observations"])
        self._summarise()

