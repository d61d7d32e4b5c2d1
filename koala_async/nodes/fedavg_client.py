"""``mode = "fedavg"``, client side: train the server's large model, upload full weights.

The client subscribes to the retained global model (``koala/<federation>/server/model``), builds the
architecture it names (checked against this client's input kind; the weights against its layout),
and once per global version trains it from the global weights on its private data for its configured
local epochs (cross-entropy, the ``train`` settings of a KOALA client with ``fedavg_lr`` as the learning
rate, a fresh optimizer per round as in FedAvg), then publishes float32 weights built on that version.
Everything else (status and last will, pacing of simulated and slowed devices, reject counting, report
fields, decoding) is :class:`~koala_async.nodes.client.ClientNode`'s.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from koala_async.core.envelope import Ack, Weights, encode
from koala_async.core.signing import sign
from koala_async.core.tiering import TierSpec
from koala_async.core.weights import check_weights
from koala_async.nodes.client import ClientConfig, ClientNode


class FedAvgClientNode(ClientNode):
    """``async with FedAvgClientNode(ClientConfig(mode="fedavg")) as client: await client.done()``."""

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(config)
        self.global_model: Weights | None = None
        self._model: Any = None  # the torch module, built when the first global model names it
        self._layouts: dict[str, dict[str, tuple[int, ...]] | None] = {}

    def _prepare(self) -> None:
        super()._prepare()
        self.tier = None  # type: ignore[assignment]  # the server's architecture, once it is known
        self.tier_reason = "fedavg: the server's model"

    def _build_trainer(self) -> None:
        """No small model: the architecture comes with the global weights."""

    def _subscriptions(self) -> tuple[tuple[str, int], ...]:
        return ((self.topics.model, 1), (self.topics.ack(self.config.node_id), 1))

    def _trained_spec(self) -> TierSpec | None:
        if not getattr(self, "tier", None):
            return None
        from koala_async.learning.catalog import large_spec

        return large_spec(self.data.spec, self.tier)

    def _in_rounds(self) -> bool:
        return True

    def _current_version(self) -> int | None:
        return self.global_model.base_version if self.global_model is not None else None

    def _layout(self, name: str) -> dict[str, tuple[int, ...]] | None:
        """Parameter name -> shape of architecture ``name`` for this data (None: not buildable here)."""
        if name not in self._layouts:
            from koala_async.learning.models import build_model

            try:
                model = build_model(name, self.data.spec, seed=0)
            except (KeyError, ValueError):
                self._layouts[name] = None
            else:
                self._layouts[name] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        return self._layouts[name]

    async def _receive(self) -> None:
        async for msg, message in self._decoded():
            if msg.topic == self.topics.ack(self.config.node_id) and isinstance(message, Ack):
                self._on_ack(message, msg.topic)
                continue
            if msg.topic != self.topics.model or not isinstance(message, Weights):
                self.rejects.reject("wrong_kind", type(message).__name__, msg.topic)
                continue
            layout = await asyncio.to_thread(self._layout, message.model)
            reason = "wrong_model" if layout is None else check_weights(message.params, layout)
            if reason is not None:
                self.rejects.reject(reason, f"global model {message.model} v{message.base_version}",
                                    msg.topic)
                continue
            self.global_model = message
            self._new_version.set()

    async def _contribute(self) -> None:
        cfg = self.config
        self.state = "waiting for the global model"
        await self._publish_status()
        while cfg.max_updates == 0 or self.updates_sent < cfg.max_updates:
            self.state = "idle"
            await self._wait_for_new_version()
            await self._train_and_publish()
        self.state = "done"
        await self._publish_status()
        self._done.set()

    async def _train_and_publish(self) -> None:
        cfg = self.config
        base = self.global_model
        assert base is not None
        self.state = "training"
        await self._publish_status()
        started = time.perf_counter()
        params = await asyncio.to_thread(self._train_global, base)
        self._trained_on = (base.base_version, len(self.data))
        await self._pace(started, distilling=False)
        update = Weights(sender=cfg.node_id, seq=self._seq.next(), base_version=base.base_version,
                         model=base.model, n_samples=len(self.data), params=params, sent_at=time.time())
        payload = encode(update)
        if cfg.signing_key:
            payload = sign(payload, cfg.signing_key.encode())
        self.state = "publishing"
        self._sent_seqs.append(update.seq)  # before publishing: the ack may beat the PUBACK
        await self.transport.publish(self.topics.update(cfg.node_id), payload, qos=1)
        self.updates_sent += 1
        self.bytes_up += len(payload)
        await self._publish_status()

    def _train_global(self, base: Weights) -> dict[str, np.ndarray]:
        """Load the global weights, train ``train.epochs`` local epochs, return the new weights."""
        import torch

        from koala_async.learning.catalog import large_spec
        from koala_async.learning.distill import LocalTrainer, TrainConfig
        from koala_async.learning.models import build_model

        cfg, t = self.config, self.config.train
        if self._model is None or self.tier != base.model:
            self._model = build_model(base.model, self.data.spec, seed=cfg.seed)
            large_spec(self.data.spec, base.model)  # measured once here, off the event loop
            self.tier = base.model
        self._model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in base.params.items()})
        trainer = LocalTrainer(self._model, TrainConfig(epochs=t.epochs, batch_size=t.batch_size,
                                                        lr=t.fedavg_lr,
                                                        kd_weight=0.0),
                               seed=cfg.seed + cfg.shard + 7919 * base.base_version)
        self.last_loss = trainer.train(self.data.x, self.data.y)
        state = self._model.state_dict()
        return {k: v.detach().numpy().astype(np.float32, copy=True) for k, v in state.items()}
