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
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from koala_async.core.admission import AdmissionContext, Decision, admit
from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import Knowledge, Message, ProxySet, Update
from koala_async.core.fusion import Contribution, Fusion
from koala_async.core.topics import Topics
from koala_async.core.trust import TierTrust
from koala_async.learning.learner import ServerData, load_server_data

if TYPE_CHECKING:
    from koala_async.core.server_state import Arrival
    from koala_async.learning.large_model import LargeModel
    from koala_async.nodes.config import ServerConfig


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
        # The distill thread and checkpoint captures take turns on the model.
        self.lock = threading.Lock()
        self._ctx: AdmissionContext | None = None
        self.large: LargeModel | None = None  # set by prepare()
        # Inference batch for knowledge and evaluation: the training batch. Larger ones are slower on a
        # CPU for a big network (MobileNetV2 at 64x64: 512 took 2.5x as long as 64 for 1,000 samples).
        self.infer_batch = config.batch_size

    # -- setup ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        from koala_async.learning import data as datasets
        from koala_async.learning.distill import Distiller
        from koala_async.learning.large_model import build_large

        cfg = self.config
        self.data: ServerData = load_server_data(cfg)
        self.spec = self.data.spec
        self.proxy_x = self.data.proxy_x
        self.proxy_id = datasets.proxy_id(self.proxy_x)
        # the configured network and its starting weights; distillation and evaluation run on its device
        self.large = build_large(cfg, self.spec)
        self.model_name = self.large.name
        self.distiller = Distiller(self.large.model, lr=cfg.lr, temperature=cfg.temperature,
                                   batch_size=cfg.batch_size, seed=cfg.seed, augment=cfg.augment,
                                   finetune=cfg.finetune, device=self.large.device)
        self.fusion = Fusion(len(self.proxy_x), self.spec.num_classes, cfg.fusion, cfg.staleness)
        self.test_accuracy = self.evaluate()

    def evaluate(self) -> float:
        from koala_async.learning.distill import accuracy

        return accuracy(self.distiller.model, self.data.test.x, self.data.test.y, batch_size=self.infer_batch)

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

        for arrival in batch:
            update: Update = arrival.message
            trust = self.trust.observe(update.tier, update.logits, update.sample_ids, self.knowledge_logits)
            weight = self.fusion.arrival_weight(version - update.base_version, update.n_samples, trust)
            self.fusion.add(update.sender, update.tier, update.base_version, update.logits, update.sample_ids,
                            weight, update.label_counts)
        targets, mask = self.fusion.targets(version)
        with self.lock:
            before = self.distiller.steps_done
            self.distiller.distill(self.proxy_x, targets, mask, steps, self.config.max_distill_seconds, stop)
            if stop.is_set():  # shutting down: the fused targets are kept, the rest can wait
                return
            if mask.any():
                self.steps_skipped += steps - (self.distiller.steps_done - before)
            self.knowledge_logits = predict_logits(self.distiller.model, self.proxy_x,
                                                   self.infer_batch).astype(np.float16)
            self.test_accuracy = self.evaluate()

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
        large = self.large.describe() if self.large is not None else {"large_model": self.model_name}
        return {**large, "test_accuracy": self.test_accuracy, "tier_trust": self.trust.as_dict(),
                "distill_steps_skipped": self.steps_skipped, "finetune": self._finetune_summary()}

    def _finetune_summary(self) -> dict[str, Any] | None:
        if self.large is None:
            return None
        d, ft = self.distiller, self.config.finetune
        return {"train": ft.train if isinstance(ft.train, str) else list(ft.train), "schedule": ft.schedule,
                "trainable_params": sum(p.numel() for p in d.model.parameters() if p.requires_grad),
                "lr_now": d.current_lr(), "steps_done": d.steps_done}

    # -- checkpoints ---------------------------------------------------------------------------

    def identity(self) -> dict[str, str]:
        return {"model_name": self.model_name, "proxy_id": self.proxy_id}

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {
                "model": {k: v.detach().clone() for k, v in self.distiller.model.state_dict().items()},
                "optimizer": self.distiller.optimizer.state_dict(),
                "steps_done": self.distiller.steps_done, "steps_skipped": self.steps_skipped,
                # the sampling RNG too, so a resumed server draws the batches the uninterrupted one would
                "generator": self.distiller.generator.get_state(),
                "knowledge_logits": self.knowledge_logits, "test_accuracy": self.test_accuracy,
                "fusion": [contribution_state(c) for c in self.fusion.contributions.values()],
                "trust": {"agreement_ema": dict(self.trust.agreement_ema),
                          "observations": dict(self.trust.observations)},
            }

    def restore(self, state: dict[str, Any]) -> None:
        # A checkpoint holds CPU tensors (io/checkpoint.py); map them back onto the model's device.
        # (load_state_dict would copy across devices anyway; the optimizer's moments follow their
        # parameters in Optimizer.load_state_dict.)
        device = self.distiller.device
        self.distiller.model.load_state_dict({k: v.to(device) for k, v in state["model"].items()})
        self.distiller.optimizer.load_state_dict(state["optimizer"])
        self.distiller.steps_done = int(state["steps_done"])
        if "generator" in state:  # absent from checkpoints written before it was kept
            self.distiller.generator.set_state(state["generator"])
        self.steps_skipped = int(state.get("steps_skipped", 0))
        logits = state["knowledge_logits"]
        self.knowledge_logits = None if logits is None else np.asarray(logits, dtype=np.float16)
        self.test_accuracy = float(state["test_accuracy"])
        for item in state["fusion"]:
            contribution = Contribution(**{**item, "probs": np.asarray(item["probs"], dtype=np.float32),
                                           "ids": np.asarray(item["ids"], dtype=np.int64)})
            self.fusion.contributions[contribution.sender] = contribution
        self.trust.agreement_ema.update(state["trust"]["agreement_ema"])
        self.trust.observations.update(state["trust"]["observations"])


def contribution_state(c: Contribution) -> dict[str, Any]:
    return {"sender": c.sender, "tier": c.tier, "base_version": c.base_version,
            "arrival_weight": c.arrival_weight, "probs": c.probs, "ids": c.ids,
            "class_weights": c.class_weights}
