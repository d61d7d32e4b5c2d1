"""The synchronous round barrier of the baselines (``sync`` KOALA and ``fedavg``): a pure decision.

Round-based frameworks (Flower, FedAvg) select the clients available when a round starts and wait
for every one of them before aggregating. :class:`RoundBarrier` holds that state and nothing else:
the node feeds it presence changes and deliveries with ``now`` and asks whether the round is complete.

Rules, in order:

- Selection: the clients *available* (online, per their retained status and last will, and not done
  with their budget) when the round starts. While nobody has delivered yet the selection follows
  availability (a client that comes up before the first delivery is waited for too: nothing has been
  decided yet); from the first delivery on it is frozen.
- A selected client that goes away (last will, goodbye, done) stops being waited for. It is not waited
  for again if it comes back in the same round, but its delivery still counts if it arrives in time.
- A delivery for the current round is accepted (also from a client outside the selection: a late
  joiner that made it in time); one built on an older round is ``stale``, one on a round that has not
  started is ``future_version``, a second one from the same client in the round is ``duplicate_round``.
- The round is complete (and closed: a delivery for it from now on is ``stale``) when it has at least
  one delivery and nobody selected is still awaited, or when ``timeout`` seconds have passed since it
  started and it has at least one delivery (a dead client that sent no last will cannot hang the
  federation). A round with no delivery never completes: there is nothing to aggregate.
- A complete round with fewer than ``min_clients`` deliveries is ``too_small`` (Flower's
  ``min_fit_clients``, 2 by default there): the node closes it without aggregating, so one client
  left alone at the end of a run (a rejoined one with a fresh budget) cannot replace the global model
  with its own non-IID one. Its delivery is counted in ``discarded``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Delivery:
    """The barrier's verdict on one delivery."""

    accepted: bool
    reason: str = "accepted"  # accepted | stale | future_version | duplicate_round


@dataclass
class RoundState:
    """One round: who is selected, who delivered, when it started."""

    number: int
    started_at: float
    selected: set[str] = field(default_factory=set)
    delivered: list[str] = field(default_factory=list)
    dropped: set[str] = field(default_factory=set)  # selected, then went away
    closed: bool = False  # complete() said yes: it is being aggregated, late deliveries are stale
    too_small: bool = False  # closed with fewer than min_clients deliveries: not to be aggregated

    @property
    def frozen(self) -> bool:
        return bool(self.delivered)


class RoundBarrier:
    """``barrier.start(r, now, available)``, then ``update_available``/``deliver``, then ``complete(now)``."""

    def __init__(self, timeout: float, min_clients: int = 1) -> None:
        if timeout <= 0:
            raise ValueError("round timeout must be > 0")
        if min_clients < 1:
            raise ValueError("min_clients must be >= 1")
        self.timeout = timeout
        self.min_clients = min_clients
        self.too_small_rounds = 0
        self.discarded = 0
        self.round: RoundState | None = None
        self.available: set[str] = set()
        self.timed_out_rounds = 0
        self.rejected: dict[str, int] = {}

    def start(self, number: int, now: float, available: Iterable[str] | None = None) -> RoundState:
        """Open round ``number``; the selection is who is available now."""
        if self.round is not None and number <= self.round.number:
            raise ValueError(f"round {number} does not follow round {self.round.number}")
        if available is not None:
            self.available = set(available)
        self.round = RoundState(number, now, selected=set(self.available))
        return self.round

    def update_available(self, available: Iterable[str]) -> None:
        """Tell the barrier who is available now (call it on every presence change)."""
        self.available = set(available)
        r = self.round
        if r is None:
            return
        if not r.frozen:
            r.selected = set(self.available)
            return
        gone = r.selected - self.available
        r.dropped |= gone
        r.selected -= gone

    def set_available(self, client: str, available: bool) -> None:
        """:meth:`update_available` for one client whose presence changed: no walk over the others."""
        if available:
            self.available.add(client)
        else:
            self.available.discard(client)
        r = self.round
        if r is None:
            return
        if not r.frozen:
            if available:
                r.selected.add(client)
            else:
                r.selected.discard(client)
        elif not available and client in r.selected:
            r.selected.discard(client)
            r.dropped.add(client)

    def deliver(self, client: str, built_on: int) -> Delivery:
        """Record that ``client`` delivered an update built on round ``built_on``."""
        r = self.round
        if r is None:
            raise RuntimeError("no round started")
        if built_on < r.number or (built_on == r.number and r.closed):
            return self._reject("stale")
        if built_on > r.number:
            return self._reject("future_version")
        if client in r.delivered:
            return self._reject("duplicate_round")
        r.delivered.append(client)
        return Delivery(True)

    def _reject(self, reason: str) -> Delivery:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return Delivery(False, reason)

    def awaited(self) -> set[str]:
        """Selected clients still expected in this round."""
        r = self.round
        return set() if r is None else r.selected - set(r.delivered)

    def awaited_count(self) -> int:
        """How many selected clients are still expected (without building the set: checked every tick)."""
        r = self.round
        if r is None:
            return 0
        return len(r.selected) - sum(1 for c in set(r.delivered) if c in r.selected)

    def complete(self, now: float) -> bool:
        """Whether the current round can be aggregated; True once per round (it closes the round)."""
        r = self.round
        if r is None or not r.delivered or r.closed:
            return False
        waiting = self.awaited_count()
        if waiting and now - r.started_at < self.timeout:
            return False
        if waiting:
            self.timed_out_rounds += 1
        r.closed = True
        if len(r.delivered) < self.min_clients:
            r.too_small = True
            self.too_small_rounds += 1
            self.discarded += len(r.delivered)
        return True

    def deadline(self) -> float | None:
        """When the current round times out (None before the first round)."""
        return None if self.round is None else self.round.started_at + self.timeout

    def summary(self, listed: int = 64) -> dict[str, object]:
        """The round as published in the server's status: who is selected, delivered and awaited, named
        only while each list has at most ``listed`` clients (their counts always), so the status stays
        small and a heartbeat walks no fleet."""
        r = self.round
        selected, delivered = (r.selected, r.delivered) if r else (set(), [])
        awaited = self.awaited_count()
        return {"round": None if r is None else r.number,
                "selected": sorted(selected) if len(selected) <= listed else [],
                "delivered": list(delivered) if len(delivered) <= listed else [],
                "awaited": sorted(self.awaited()) if awaited <= listed else [],
                "selected_count": len(selected), "delivered_count": len(delivered), "awaited_count": awaited,
                "timed_out_rounds": self.timed_out_rounds,
                "too_small_rounds": self.too_small_rounds, "discarded": self.discarded,
                "rejected": dict(self.rejected)}
