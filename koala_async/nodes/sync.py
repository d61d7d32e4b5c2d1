"""``mode = "sync"``: the same KOALA bi-directional distillation, in synchronous rounds.

The baseline round-based frameworks (Flower) implement: knowledge version ``v`` is round ``v``. The
server selects the clients online when the round starts (:class:`~koala_async.core.rounds.RoundBarrier`),
waits for every one of them (or the round timeout; a client whose last will arrives is no longer
waited for), fuses every update of the round, distills once (``distill_steps`` per update, as the
asynchronous server spends per arrival), and publishes version ``v + 1``: the next round. Clients
train once per version (``ClientNode`` in rounds). An update built on an older round is ``stale``.

:class:`RoundServerNode` is the round driver; FedAvg (:mod:`koala_async.nodes.fedavg_server`)
reuses it with another aggregation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from koala_async.core.admission import AdmissionContext
from koala_async.core.envelope import Update, Weights
from koala_async.core.rounds import RoundBarrier
from koala_async.nodes.server import ServerConfig, ServerNode

log = logging.getLogger(__name__)

# How often the round loop re-checks the clock when nothing arrives (the round timeout's resolution).
TICK = 0.25


class RoundServerNode(ServerNode):
    """A server that aggregates in rounds: subclasses say what completing a round does."""

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.barrier = RoundBarrier(config.round_timeout, config.round_min_clients)

    def _available(self) -> set[str]:
        """Clients that can take part: online (retained status / last will) and not done."""
        return {cid for cid, info in self.online.items() if info.get("online") and info.get("state") != "done"}

    def _presence_changed(self) -> None:
        self.barrier.update_available(self._available())
        self._arrived.set()

    def _admission_context(self) -> AdmissionContext:
        # Only the current round counts: an update built on an older version is "stale".
        ctx = super()._admission_context()
        return replace(ctx, policy=replace(ctx.policy, max_staleness=0))

    def _round_verdict(self, update: Update | Weights) -> str:
        return self.barrier.deliver(update.sender, update.base_version).reason

    def _prepare(self) -> None:
        super()._prepare()
        # The first round opens before any message is read (its selection fills as clients appear).
        self.barrier.start(self.version, time.monotonic(), ())
        # Updates replayed from a journal after a restart take part in the round they were built on.
        kept = []
        for item in self._pending:
            reason = self._round_verdict(item[0])
            if reason == "accepted":
                kept.append(item)
            else:
                self.rejects.reject(reason, "replayed", item[0].sender)
        self._pending = kept

    async def _learn(self) -> None:
        while True:
            try:
                async with asyncio.timeout(TICK):
                    await self._arrived.wait()
            except TimeoutError:
                pass
            self._arrived.clear()
            if not self.barrier.complete(time.monotonic()):
                continue
            batch, self._pending = self._pending, []
            if self.barrier.round is not None and self.barrier.round.too_small:
                # Not aggregated: the same model is republished as the next round, so the clients
                # still in the run move on (and the run can end).
                log.info("round %d: %d delivered < %d, not aggregated", self.version, len(batch),
                         self.config.round_min_clients)
                batch = []
            summary = self.barrier.summary()
            log.info("round %d complete: %d delivered (%s), %s still awaited", self.version, len(batch),
                     ", ".join(summary["delivered"]), summary["awaited"] or "none")  # type: ignore[arg-type]
            self._in_flight = len(batch)
            try:
                await self._complete_round(batch)
            finally:
                self._in_flight = 0
            self.barrier.start(self.version, time.monotonic(), self._available())

    async def _complete_round(self, batch: list[tuple[Any, bytes, float]]) -> None:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "round": self.barrier.summary()}


class SyncServerNode(RoundServerNode):
    """KOALA in rounds: fuse the round's logits, distill, publish the next knowledge version."""

    async def _complete_round(self, batch: list[tuple[Any, bytes, float]]) -> None:
        # An empty batch (a round too small to aggregate) distills nothing and republishes.
        await self._advance(batch, steps=self.config.distill_steps * len(batch))
