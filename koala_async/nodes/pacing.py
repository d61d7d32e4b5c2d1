"""When the server learns: the pacing policy of a mode.

The server node's learn loop asks its pacing for the next :class:`Batch` of accepted arrivals and
hands it to the learner. A pacing may also refuse an otherwise admissible update (``gate``: a round
takes one delivery per client, built on the current round) and wants to hear about presence changes
(``on_presence``: a round waits for the clients that were available when it started).

- :class:`Continuous` (``async``): no rounds. A batch is whatever arrived (at least ``buffer_size``
  arrivals, or fewer after a short wait so a quiet federation still learns, but never none: a wake-up
  without arrivals, such as a client's status change, publishes no version, which would make every
  client one version staler for nothing); each arrival buys ``distill_steps`` steps, capped so a
  burst cannot stall the loop, and the learner damps them by staleness
  (:func:`~koala_async.core.staleness.damped_steps`). Only the first version waits for a share of the
  available clients (:mod:`koala_async.core.warmup`): it is all the clients will know.
  ``fedbuff`` uses it too, with ``buffer_size`` as FedBuff's K and no cold-start wait.
- :class:`Rounds` (``sync``, ``fedavg``): a batch is a complete round
  (:class:`~koala_async.core.rounds.RoundBarrier`): every selected client delivered, or the round timed
  out with at least one delivery.
- :class:`Discard` (benchmarks, ``ingest_only``): arrivals are counted and dropped, nothing is learned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from koala_async.core.rounds import RoundBarrier
from koala_async.core.server_state import Arrival, ServerState, always_open

if TYPE_CHECKING:
    from koala_async.nodes.config import ServerConfig

log = logging.getLogger(__name__)

FLUSH_AFTER = 2.0  # seconds a partial buffer waits before it is fused anyway
# The most arrivals one version fuses; the rest wait for the next. Bounds a version's fusion work (and
# so the wait for a stop) whatever the backlog: each arrival costs about 0.4 ms (2-core dev machine).
MAX_BATCH = 2048
TICK = 0.25  # how often a round re-checks the clock when nothing arrives (its timeout's resolution)


@dataclass(frozen=True)
class Batch:
    arrivals: list[Arrival]
    steps: int  # distillation steps the batch buys


class Pacing(Protocol):
    def gate(self, message: Any) -> str: ...

    def on_presence(self, state: ServerState, client: str | None = None) -> None:
        """``client``'s availability changed (None: anyone's may have)."""

    def resume(self, state: ServerState) -> None: ...

    async def next_batch(self, state: ServerState, arrived: asyncio.Event, idle: float | None) -> Batch | None:
        """The next batch to learn from; None when ``idle`` seconds passed with nothing to do."""

    def published(self, state: ServerState) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...


async def _wait(event: asyncio.Event, seconds: float | None) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


class Continuous:
    gate = staticmethod(always_open)

    def __init__(self, config: ServerConfig, warmup: bool = True) -> None:
        self.buffer_size = config.buffer_size
        self.distill_steps = config.distill_steps
        self.warmup = config.warmup if warmup else None

    def on_presence(self, state: ServerState, client: str | None = None) -> None:
        pass

    def resume(self, state: ServerState) -> None:
        pass

    async def next_batch(self, state: ServerState, arrived: asyncio.Event, idle: float | None) -> Batch | None:
        if not await _wait(arrived, idle):
            return None
        if not state.pending:
            # Woken by a presence change, not an arrival: nothing new to learn, so no new version. (A
            # version without arrivals republished the untrained model's logits as knowledge, which
            # clients then distilled: the early collapse to chance accuracy.)
            arrived.clear()
            return None
        first = state.version == 0
        if first and self.warmup is not None:
            await self._warm_up(state, arrived)
        if len(state.pending) < self.buffer_size:
            deadline = time.monotonic() + FLUSH_AFTER
            while len(state.pending) < self.buffer_size and time.monotonic() < deadline:
                arrived.clear()
                await _wait(arrived, deadline - time.monotonic())
        arrived.clear()
        if not state.pending:  # woken by a presence change: nothing to learn, so no new version
            return None
        arrivals = state.take(MAX_BATCH)
        if state.pending:
            arrived.set()  # more than one batch waits: the next version starts at once
        # Arrivals that queued up while the last distillation ran still each buy training, capped so a
        # burst cannot stall the loop; the first version, which every client will learn from, gets
        # steps for each client it fuses.
        cap = len({a.message.sender for a in arrivals}) if first else max(4, self.buffer_size)
        return Batch(arrivals, self.distill_steps * min(len(arrivals), cap))

    async def _warm_up(self, state: ServerState, arrived: asyncio.Event) -> None:
        """Hold the first version until a share of the available clients delivered (core/warmup.py)."""
        while True:
            waited = time.monotonic() - state.pending[0].arrived
            contributors = len({a.message.sender for a in state.pending})
            assert self.warmup is not None
            if self.warmup.ready(contributors, len(state.available()), waited):
                log.info("first version: %d clients delivered after %.1f s (%d available)", contributors,
                         waited, len(state.available()))
                return
            arrived.clear()
            await _wait(arrived, self.warmup.remaining(waited))

    def published(self, state: ServerState) -> None:
        pass

    def snapshot(self) -> dict[str, Any]:
        return {}


class Rounds:
    def __init__(self, config: ServerConfig) -> None:
        self.barrier = RoundBarrier(config.round_timeout, config.round_min_clients)
        self.distill_steps = config.distill_steps

    def gate(self, message: Any) -> str:
        return self.barrier.deliver(message.sender, message.base_version).reason

    def on_presence(self, state: ServerState, client: str | None = None) -> None:
        if client is None:
            self.barrier.update_available(state.available())
        else:  # one status changed one client: O(1), not a copy of the fleet per status
            self.barrier.set_available(client, client in state.idle)

    def resume(self, state: ServerState) -> None:
        """Open the first round; updates replayed from a journal take part in the round they were built on."""
        self.barrier.start(state.version, time.monotonic(), ())
        kept = []
        for arrival in state.pending:
            reason = self.gate(arrival.message)
            if reason == "accepted":
                kept.append(arrival)
            else:
                state.rejects.reject(reason, "replayed", arrival.message.sender)
        state.pending = kept

    async def next_batch(self, state: ServerState, arrived: asyncio.Event, idle: float | None) -> Batch | None:
        await _wait(arrived, TICK)
        arrived.clear()
        if not self.barrier.complete(time.monotonic()):
            return None
        arrivals = state.take()
        if self.barrier.round is not None and self.barrier.round.too_small:
            # Not aggregated: the same model is republished as the next round, so the clients still in
            # the run move on (and the run can end).
            log.info("round %d: %d delivered < %d, not aggregated", state.version, len(arrivals),
                     self.barrier.min_clients)
            arrivals = []
        summary = self.barrier.summary()
        log.info("round %d complete: %d delivered (%s), %s still awaited", state.version, len(arrivals),
                 ", ".join(map(str, summary["delivered"])), summary["awaited"] or "none")  # type: ignore[call-overload]
        return Batch(arrivals, self.distill_steps * len(arrivals))

    def published(self, state: ServerState) -> None:
        self.barrier.start(state.version, time.monotonic(), state.available())

    def snapshot(self) -> dict[str, Any]:
        return {"round": self.barrier.summary()}


class Discard(Continuous):
    """Benchmarks: admit and count, never fuse, distill or publish a version."""

    async def next_batch(self, state: ServerState, arrived: asyncio.Event, idle: float | None) -> Batch | None:
        # Drain in batches, as a learner busy distilling would: a wake-up per arrival would load the
        # ingest path with work the real server does not do.
        await asyncio.sleep(0.5)
        state.take()
        state.in_flight = 0
        arrived.clear()
        return None
