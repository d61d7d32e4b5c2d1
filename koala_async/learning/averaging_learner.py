"""FedAvg's server learner: the global model is the sample-weighted average of the clients' weights.

Clients train the server's large architecture from the current global weights and upload full
float32 weights (:class:`~koala_async.core.envelope.Weights`). Each is checked against the
architecture's layout, the round, the sender and duplicates
(:func:`~koala_async.core.weights.admit_weights`); a round's weights are averaged by ``n_samples``
(:func:`~koala_async.core.weights.weighted_average`), evaluated on the validation and test splits
(:mod:`koala_async.learning.evaluation`; the best on validation is kept), and published retained on
``koala/<federation>/server/model``. The baseline keeps no checkpoints. Its clients never see the
proxy set, so vector inputs are not standardized in this mode (on either side).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from koala_async.core.admission import Decision
from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import Message, Weights
from koala_async.core.topics import Topics
from koala_async.core.weights import admit_weights, conform, weighted_average
from koala_async.learning.learner import load_server_data

if TYPE_CHECKING:
    from koala_async.core.server_state import Arrival
    from koala_async.learning.large_model import LargeModel
    from koala_async.nodes.config import ServerConfig


class AveragingLearner:
    def __init__(self, config: ServerConfig, topics: Topics, next_seq: Any) -> None:
        self.config = config
        self.topics = topics
        self.next_seq = next_seq
        self.model_name = ""
        self.lock = threading.Lock()
        self.large: LargeModel | None = None  # set by prepare()

    def prepare(self) -> None:
        from koala_async.learning.evaluation import VersionScores
        from koala_async.learning.large_model import build_large

        cfg = self.config
        self.data = load_server_data(cfg, standardize=False)
        # The same architecture, seed and starting weights (large_weights) as KOALA's large model: the
        # first global model clients download is the pretrained one. It lives on the server's device
        # (evaluation runs there); what is published is copied back to the CPU.
        self.large = build_large(cfg, self.data.spec)
        self.model_name = self.large.name
        self.model = self.large.model.to(self.large.device)
        self.layout = {name: tuple(t.shape) for name, t in self.model.state_dict().items()}
        self.scores = VersionScores(self.data.validation, self.data.test, cfg.batch_size)
        self.scores.evaluate(self.model, 0)
        self._payload_version = -1
        self._weights: Weights | None = None

    @property
    def test_accuracy(self) -> float:
        return self.scores.test_accuracy

    def admit(self, message: Message, topic_sender: str | None, version: int, seen: SeqWindow,
              now_ms: int | None = None) -> Decision | None:
        if not isinstance(message, Weights):
            return None
        return admit_weights(message, topic_sender, version, self.model_name, self.layout, seen, now_ms)

    def advance(self, batch: list[Arrival], version: int, steps: int, stop: threading.Event,
                departed: Sequence[str] = ()) -> None:
        import torch

        if not batch:  # a round too small to aggregate: the same weights become the next round
            return
        averaged = weighted_average([(a.message.params, float(a.message.n_samples)) for a in batch])
        with self.lock:
            self.model.load_state_dict({k: torch.from_numpy(v) for k, v in conform(averaged, self.layout).items()})
            self.scores.evaluate(self.model, version + 1)

    def retained(self, version: int, full: bool) -> list[tuple[str, Message]]:
        if self._weights is None or self._payload_version != version:
            with self.lock:
                params = {name: t.detach().cpu().numpy().astype(np.float32, copy=True)
                          for name, t in self.model.state_dict().items()}
            self._weights = Weights(sender=self.config.node_id, seq=self.next_seq(), base_version=version,
                                    model=self.model_name, n_samples=0, params=params, sent_at=time.time())
            self._payload_version = version
        return [(self.topics.model, self._weights)]

    def proxy_chunks(self) -> tuple[()]:
        return ()  # FedAvg has no proxy set

    def snapshot(self) -> dict[str, Any]:
        large = self.large.describe() if self.large is not None else {"large_model": self.model_name}
        return {**large, **self.scores.snapshot()}

    def identity(self) -> dict[str, str]:
        return {"model_name": self.model_name}

    def state(self) -> dict[str, Any]:
        raise NotImplementedError("the FedAvg baseline keeps no checkpoints")

    def restore(self, state: dict[str, Any]) -> None:
        raise NotImplementedError("the FedAvg baseline keeps no checkpoints")
