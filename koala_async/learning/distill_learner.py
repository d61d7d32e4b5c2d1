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
   (:mod:`koala_async.learning.evaluation`). With ``[server] proxy_subset`` (core/proxy_schedule.py)
   the logits cover only the samples scheduled for the new version, and the knowledge names them.

One temperature: the server's ``temperature`` softens the fused client logits, the distillation, and
travels in the knowledge to every client's forward distillation. Vector inputs are standardized with
the proxy set's statistics, as every client does (:mod:`koala_async.learning.standardize`); the
knowledge carries the split's fingerprint that clients check their shards against
(:mod:`koala_async.core.splits`).

Published, retained: the proxy set's manifest (core/proxy_manifest.py) and its chunks (on every
connect; :meth:`DistillLearner.proxy_chunks` yields them one at a time, as views of the proxy array),
and the knowledge (on every version).

Bounded whatever the number of client ids: the fusion keeps the contributions of at most
``max_contributions`` clients (the least recently heard from are dropped first), so a version's
fusion time and a checkpoint's size do not grow with a flood of made-up ids; and what the learner
adds to the server's status is computed here, in the learner's thread, once per version, and
lists at most ``MAX_LISTED_TIERS`` tiers (tier names come from the network), so a heartbeat on the
event loop only copies it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from koala_async.core.admission import AdmissionContext, Decision, admit
from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import Knowledge, Message, Update
from koala_async.core.fusion import Fusion
from koala_async.core.proxy_manifest import ProxyChunk, ProxyManifest, array_bytes, build_manifest, chunks
from koala_async.core.proxy_schedule import ProxySchedule, schedule_for
from koala_async.core.staleness import damped_steps
from koala_async.core.topics import Topics
from koala_async.core.trust import TierTrust
from koala_async.learning.learner import ServerData, load_server_data

if TYPE_CHECKING:
    from koala_async.core.server_state import Arrival
    from koala_async.learning.large_model import LargeModel
    from koala_async.nodes.config import ServerConfig

log = logging.getLogger(__name__)

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
        self.knowledge_logits: np.ndarray | None = None  # (N, C) float16: the latest computed per sample
        self.knowledge_known: np.ndarray | None = None  # (N,) bool: rows of knowledge_logits computed (subsets)
        self.schedule: ProxySchedule | None = None
        self.trust = TierTrust(config.trust)
        self.steps_skipped = 0
        self.max_contributions = config.max_contributions
        self.contributions_dropped = 0  # contributions forgotten past max_contributions
        self.forgotten = 0  # contributions dropped for departure or silence
        self._summary: dict[str, Any] = {}  # the status part, refreshed by the thread that learns
        # The distill thread and checkpoint captures take turns on the model and the fusion.
        self.lock = threading.Lock()
        self._ctx: AdmissionContext | None = None
        self.large: LargeModel | None = None  # set by prepare()
        # Inference batch for knowledge and evaluation: the training batch. Larger ones are slower on a
        # CPU for a big network (MobileNetV2 at 64x64: 512 took 2.5x as long as 64 for 1,000 samples).
        self.infer_batch = config.batch_size

    # -- setup ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        from koala_async.learning.distill import Distiller
        from koala_async.learning.evaluation import VersionScores
        from koala_async.learning.large_model import build_large

        cfg = self.config
        self.data: ServerData = load_server_data(cfg)
        self.spec = self.data.spec
        self.proxy_x = self.data.proxy_x  # published as is
        self.proxy_inputs = self.data.proxy_inputs  # what the model sees (standardized vectors)
        # one pass over the bytes: the chunk hashes and the proxy id (learning/data.py proxy_id, the same hash)
        self.manifest: ProxyManifest = build_manifest(self.proxy_x, self.spec.num_classes, cfg.proxy_chunk_bytes,
                                                      cfg.node_id)
        self.proxy_id = self.manifest.proxy_id
        self.schedule = schedule_for(len(self.proxy_x), cfg.proxy_subset, cfg.seed)
        # the configured network and its starting weights; distillation and evaluation run on its device
        self.large = build_large(cfg, self.spec)
        self.model_name = self.large.name
        self.distiller = Distiller(self.large.model, lr=cfg.lr, temperature=cfg.temperature,
                                   batch_size=cfg.batch_size, seed=cfg.seed, augment=cfg.augment,
                                   finetune=cfg.finetune, device=self.large.device)
        self.fusion = Fusion(len(self.proxy_x), self.spec.num_classes, cfg.fusion, cfg.staleness)
        self.scores = VersionScores(self.data.validation, self.data.test, self.infer_batch)
        self.scores.evaluate(self.distiller.model, 0)
        self._summarise()

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
                                               accepted_tiers=cfg.accepted_tiers, schedule=self.schedule)
        return admit(message, topic_sender, ctx, seen, now_ms)

    def advance(self, batch: list[Arrival], version: int, steps: int, stop: threading.Event,
                departed: Sequence[str] = ()) -> None:
        # The whole batch joins the fusion under the lock, even when stopping: its arrivals have left
        # the server's pending list, so the checkpoint written on the way out (which waits for the lock)
        # must find every one of them in the fusion.
        with self.lock:
            scales = []  # w(s) of each arrival fused
            for arrival in batch:
                update: Update = arrival.message
                trust = self.trust.observe(update.tier, update.logits, update.sample_ids, self._reference(update))
                if self._fuse(update, trust, version):
                    scales.append(self.fusion.step_scale(max(version - update.base_version, 0)))
            self.forget(departed, version)
            if stop.is_set():  # shutting down: the fused contributions are kept, the rest can wait
                return
            targets, mask = self.fusion.targets(version)
            # FedAsync damping: each arrival buys distill_steps * w(s) steps (core/staleness.py)
            steps = damped_steps(steps, scales)
            before = self.distiller.steps_done
            self.distiller.distill(self.proxy_inputs, targets, mask, steps, self.config.max_distill_seconds, stop)
            if stop.is_set():
                return
            if mask.any():
                self.steps_skipped += steps - (self.distiller.steps_done - before)
            self._predict(version + 1)
            self.scores.evaluate(self.distiller.model, version + 1)
            self._summarise()

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

    def _fuse(self, update: Update, trust: float, version: int) -> bool:
        """Make ``update`` its sender's contribution, the most recent one; forget the least recent
        contributions past ``max_contributions``. False when fusion refused it."""
        try:
            self.fusion.add(update.sender, update.tier, update.base_version, update.logits, update.sample_ids,
                            n_samples=update.n_samples, trust=trust, label_counts=update.label_counts,
                            version=version)
        except ValueError as exc:  # admission checked shapes and ids; fusion refuses what it cannot bound
            log.warning("update %s/%d not fused: %s", update.sender, update.seq, exc)
            return False
        contributions = self.fusion.contributions  # in order of last arrival
        while len(contributions) > self.max_contributions:
            self.fusion.forget(next(iter(contributions)))
            self.contributions_dropped += 1
        return True

    def _summarise(self) -> None:
        large = self.large.describe() if self.large is not None else {"large_model": self.model_name}
        self._summary = {**large, **self.scores.snapshot(), "finetune": self._finetune_summary(),
                         "tier_trust": trust_summary(self.trust), "tiers_seen": len(self.trust.agreement_ema),
                         "distill_steps_skipped": self.steps_skipped, "distill_steps_done": self.distiller.steps_done,
                         "contributions": len(self.fusion.contributions),
                         "contributions_dropped": self.contributions_dropped,
                         "contributions_forgotten": self.forgotten}

    def _finetune_summary(self) -> dict[str, Any] | None:
        if self.large is None:
            return None
        d, ft = self.distiller, self.config.finetune
        return {"train": ft.train if isinstance(ft.train, str) else list(ft.train), "schedule": ft.schedule,
                "trainable_params": sum(p.numel() for p in d.model.parameters() if p.requires_grad),
                "lr_now": d.current_lr(), "steps_done": d.steps_done}

    def _predict(self, version: int) -> None:
        """The large model's logits on what the knowledge of ``version`` carries (all, or its subset)."""
        from koala_async.learning.distill import predict_logits

        model = self.distiller.model
        if self.schedule is None:
            self.knowledge_logits = predict_logits(model, self.proxy_inputs, self.infer_batch).astype(np.float16)
            return
        if self.knowledge_logits is None or self.knowledge_known is None:
            self.knowledge_logits = np.zeros((len(self.proxy_x), self.spec.num_classes), np.float16)
            self.knowledge_known = np.zeros(len(self.proxy_x), dtype=bool)
        ids = self.schedule.ids(version)
        self.knowledge_logits[ids] = predict_logits(model, self.proxy_inputs[ids], self.infer_batch).astype(np.float16)
        self.knowledge_known[ids] = True

    def _reference(self, update: Update) -> np.ndarray | None:
        """The large model's logits to judge ``update``'s tier by, if it has them on all its samples."""
        known, ids = self.knowledge_known, update.sample_ids
        if self.schedule is None or (known is not None and ids is not None and known[ids].all()):
            return self.knowledge_logits
        return None

    def _scheduled_knowledge(self, version: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(logits, ids) the knowledge of ``version`` carries."""
        if self.schedule is None:
            return self.knowledge_logits, None
        ids, known = self.schedule.ids(version), self.knowledge_known
        ready = self.knowledge_logits is not None and known is not None and bool(known[ids].all())
        return (self.knowledge_logits[ids] if ready and self.knowledge_logits is not None else None), ids

    def retained(self, version: int, full: bool) -> list[tuple[str, Message]]:
        cfg = self.config
        logits, ids = self._scheduled_knowledge(version)
        knowledge = Knowledge(sender=cfg.node_id, seq=self.next_seq(), version=version, proxy_id=self.proxy_id,
                              num_classes=self.spec.num_classes, temperature=cfg.temperature,
                              logits=logits, accepted_tiers=cfg.accepted_tiers,
                              sent_at=time.time(), mode=cfg.mode.value, ids=ids, split=self.data.split)
        if not full:
            return [(self.topics.knowledge, knowledge)]
        manifest = replace(self.manifest, seq=self.next_seq(), sent_at=time.time())
        return [(self.topics.proxy, manifest), (self.topics.knowledge, knowledge)]

    def proxy_chunks(self) -> Iterator[tuple[str, ProxyChunk]]:
        """The proxy set's chunks with their topics, each a view of the proxy array (encode one at a time)."""
        for chunk in chunks(self.manifest, array_bytes(self.proxy_x), self.config.node_id, sent_at=time.time()):
            yield self.topics.proxy_chunk(self.proxy_id, chunk.index), chunk

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
                "knowledge_logits": self.knowledge_logits, "scores": self.scores.state(),
                "knowledge_known": None if self.knowledge_known is None else self.knowledge_known.astype(np.uint8),
                "fusion": self.fusion.to_state(), "forgotten": self.forgotten,
                # the sampling RNG too, so a resumed server draws the batches the uninterrupted one would
                "generator": self.distiller.generator.get_state(),
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
        known = state.get("knowledge_known")
        self.knowledge_known = None if known is None else np.asarray(known, dtype=bool)
        if self.schedule is not None and self.knowledge_logits is not None and self.knowledge_known is None:
            self.knowledge_known = np.ones(len(self.knowledge_logits), dtype=bool)  # a whole-proxy checkpoint
        elif self.schedule is None and self.knowledge_known is not None and not self.knowledge_known.all():
            self.knowledge_logits = None  # a subset checkpoint without its subset: computed anew next version
        if "scores" in state:
            self.scores.restore(state["scores"])
        else:  # a checkpoint from before validation: its test score only
            self.scores.test_accuracy = float(state["test_accuracy"])
        self.forgotten = int(state.get("forgotten", 0))
        self.fusion = Fusion.from_state(state["fusion"], len(self.proxy_x), self.spec.num_classes,
                                        self.config.fusion, self.config.staleness)
        self.trust.agreement_ema.update(state["trust"]["agreement_ema"])
        self.trust.observations.update(state["trust"]["observations"])
        self._summarise()

