"""``mode = "fedavg"``, server side: conventional federated averaging of the large model.

Every client trains the server's large architecture on its private data from the current global
weights and uploads its full float32 weights (:class:`~koala_async.core.envelope.Weights`) on its
update topic. Rounds are the same barrier as ``sync`` (:class:`~koala_async.nodes.sync.RoundServerNode`):
when a round completes the server averages the round's weights by ``n_samples``
(:func:`~koala_async.core.weights.weighted_average`), evaluates on the held-out test split and
publishes the new global model, retained, on ``koala/<federation>/server/model``: the next round.

Weights are checked against the architecture's layout (names, shapes), the round, the sender and
duplicates (:func:`~koala_async.core.weights.admit_weights`); a bad one is counted by reason and
dropped. Each upload gets a verdict on the client's ack topic, as in KOALA. This baseline keeps no
checkpoints (``state_dir`` is ignored).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

import numpy as np

from koala_async.core.admission import Decision
from koala_async.core.envelope import Weights, encode
from koala_async.core.weights import admit_weights, weighted_average
from koala_async.io.transport import Transport
from koala_async.nodes.server import ServerConfig
from koala_async.nodes.sync import RoundServerNode

log = logging.getLogger(__name__)


class FedAvgServerNode(RoundServerNode):
    """``async with FedAvgServerNode(ServerConfig(mode="fedavg")) as server: ...``"""

    def __init__(self, config: ServerConfig) -> None:
        if config.state_dir:
            log.info("fedavg baseline: no checkpoints, state_dir %s is not used", config.state_dir)
            config = replace(config, state_dir=None)
        super().__init__(config)
        self._model_payload = b""

    def _prepare(self) -> None:
        super()._prepare()
        # The global model is the distiller's large model (same architecture and seed as KOALA's).
        self.layout = {name: tuple(t.shape) for name, t in self.distiller.model.state_dict().items()}
        self._model_payload = self._encode_model()

    def _encode_model(self) -> bytes:
        with self._model_lock:
            params = {name: t.detach().numpy().astype(np.float32, copy=True)
                      for name, t in self.distiller.model.state_dict().items()}
        return encode(Weights(sender=self.config.node_id, seq=self._seq.next(), base_version=self.version,
                              model=self.large_name, n_samples=0, params=params, sent_at=time.time()))

    async def _on_connect(self, transport: Transport) -> None:
        """(Re)publish the retained global model and status: a restarted broker may have lost them."""
        await transport.publish(self.topics.model, self._model_payload, retain=True)
        await transport.publish(self.topics.server_status, self._status_payload(True, "serving"), retain=True)

    def _admit(self, message: Any, client_id: str | None) -> Decision | None:
        if not isinstance(message, Weights):
            return None
        return admit_weights(message, client_id, self.version, self.large_name, self.layout, self.seen)

    def _keep(self, update: Weights, envelope: bytes, staleness: int) -> None:  # type: ignore[override]
        # Counted and queued like a KOALA update; the round loop reads only sender, seq, arrival and
        # the decoded weights, so the envelope (megabytes) is not held.
        self._record_accepted(update, b"", staleness)  # type: ignore[arg-type]

    async def _complete_round(self, batch: list[tuple[Any, bytes, float]]) -> None:
        models = [(w.params, float(w.n_samples)) for w, _, _ in batch]
        started = time.perf_counter()
        if models:  # empty: a round too small to aggregate; the same weights become the next round
            await asyncio.to_thread(self._aggregate, models)
        self.metrics.distill_seconds += time.perf_counter() - started  # here: averaging + evaluation
        self.version += 1
        self.metrics.timeline.append((round(time.monotonic() - self._started, 3), self.version,
                                      self.test_accuracy))
        self._model_payload = await asyncio.to_thread(self._encode_model)
        self.metrics.knowledge_bytes += len(self._model_payload)
        await self.transport.publish(self.topics.model, self._model_payload, retain=True)
        self._record_fused(batch)
        await self._publish_status()
        log.info("round %d: global model averaged from %d clients, test accuracy %.3f", self.version,
                 len(batch), self.test_accuracy)

    def _aggregate(self, models: list[tuple[dict[str, np.ndarray], float]]) -> None:
        import torch

        averaged = weighted_average(models)
        with self._model_lock:
            self.distiller.model.load_state_dict({k: torch.from_numpy(v) for k, v in averaged.items()})
            self.test_accuracy = self._evaluate()
