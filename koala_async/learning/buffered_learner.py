"""FedBuff's server learner: buffered, staleness-scaled deltas of the clients' large-model weights.

Clients train the large model from the latest global weights whenever they are ready (no rounds) and
upload their weights with the version they built on. The pacing (``Continuous`` with ``buffer_size``
= FedBuff's ``K``) hands the learner batches of arrivals; each becomes a delta against the global
weights of its base version, scaled by the staleness policy, and their mean moves the global model
(:func:`~koala_async.core.fedbuff.apply_deltas`). The global weights of the last ``HISTORY`` versions
are kept for that; an update built on an older one is refused as ``stale``. The new global model is
evaluated on the validation and test splits and published retained, as FedAvg's.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from koala_async.core.admission import Decision
from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import Message, Weights
from koala_async.core.fedbuff import admit_buffered, apply_deltas
from koala_async.core.weights import conform
from koala_async.learning.averaging_learner import AveragingLearner

if TYPE_CHECKING:
    from koala_async.core.server_state import Arrival

log = logging.getLogger(__name__)

HISTORY = 16  # global versions whose weights are kept as bases for deltas (also capped by max_staleness)


class BufferedLearner(AveragingLearner):
    def prepare(self) -> None:
        super().prepare()
        self.history: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self.unapplied = 0  # arrivals whose base was dropped from the history while they waited

    def admit(self, message: Message, topic_sender: str | None, version: int, seen: SeqWindow,
              now_ms: int | None = None) -> Decision | None:
        if not isinstance(message, Weights):
            return None
        return admit_buffered(message, topic_sender, version, self.model_name, self.layout, seen,
                              self.history.keys(), self.config.staleness, now_ms)

    def advance(self, batch: list[Arrival], version: int, steps: int, stop: threading.Event,
                departed: Sequence[str] = ()) -> None:
        import torch

        policy = self.config.staleness
        arrivals = []
        for arrival in batch:
            weights: Weights = arrival.message
            base = self.history.get(weights.base_version)
            if base is None:
                self.unapplied += 1
                log.warning("update %s/%d: base version %d no longer kept", weights.sender, weights.seq,
                            weights.base_version)
                continue
            arrivals.append((weights.params, base, policy.weight(version - weights.base_version)))
        if not arrivals:
            return
        current = self.history.get(version) or self._params()
        updated = apply_deltas(current, arrivals, self.config.global_lr)
        with self.lock:
            self.model.load_state_dict({k: torch.from_numpy(v) for k, v in conform(updated, self.layout).items()})
            self.scores.evaluate(self.model, version + 1)

    def _params(self) -> dict[str, np.ndarray]:
        with self.lock:
            return {k: t.detach().cpu().numpy().astype(np.float32, copy=True) for k, t in self.model.state_dict().items()}

    def retained(self, version: int, full: bool) -> list[tuple[str, Message]]:
        published = super().retained(version, full)
        if version not in self.history:
            assert self._weights is not None
            self.history[version] = self._weights.params
            keep = max(1, min(HISTORY, self.config.staleness.max_staleness + 1))
            while len(self.history) > keep:
                self.history.popitem(last=False)
        return published

    def snapshot(self) -> dict[str, object]:
        return {**super().snapshot(), "deltas_unapplied": self.unapplied, "versions_kept": len(self.history)}
