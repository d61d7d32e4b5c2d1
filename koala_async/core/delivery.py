"""A client's end-to-end delivery ledger, pure: an update stays pending until the server's verdict.

A broker's PUBACK only says the broker took the message. Mosquitto's default
``max_queued_messages 1000`` silently drops QoS 1 messages queued for a subscriber that falls
behind, so a client that forgets an update on the PUBACK can lose it without anyone noticing. The
ledger keeps each update until the server's verdict (its :class:`~koala_async.core.envelope.Ack`):

- **pending**: published, no verdict yet. At most one: a newer update from the same client replaces
  the older one in the server's fusion anyway, so publishing a new one *supersedes* the pending one.
- **republish**: a pending update with no verdict after ``ack_timeout`` seconds is published again,
  same sequence number (the server's dedupe answers a copy it already took with an accepted-equivalent
  verdict, ``accepted=True, reason="duplicate"``); the wait doubles with each try, up to ``max_backoff``.
- **superseded**: an update replaced before its verdict. Every new update carries the superseded
  numbers the server has not confirmed yet (``Update.supersedes``, at most :data:`MAX_CARRIED`), so the
  server can count them, refuse a late copy, and answer each: ``superseded`` (it never had it), or
  the verdict it gave (it had it: the ledger moves the update from superseded to that verdict).

Every update published is counted exactly once, whatever order verdicts arrive in::

    sent == accepted + sum(rejected.values()) + superseded + len(pending)

Memory is bounded: one pending payload, :data:`MAX_CARRIED` unconfirmed numbers, and the last
:data:`MEMORY` numbers with a verdict (so a repeated verdict is recognised and not counted twice).
Nothing here does I/O or reads a clock: ``now`` is passed in.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Literal

from koala_async.core.envelope import MAX_SUPERSEDED

MAX_CARRIED = MAX_SUPERSEDED  # superseded numbers an update carries at most (the envelope refuses more)
MEMORY = 1024  # numbers remembered after their verdict, and superseded numbers awaiting one

Outcome = Literal["accepted", "rejected", "converted", "confirmed", "repeat", "unknown"]


@dataclass
class Pending:
    """The update awaiting its verdict."""

    seq: int
    payload: bytes
    first_sent: float
    deadline: float  # when to republish if no verdict came
    attempts: int = 1  # publications so far


class DeliveryLedger:
    """See the module docstring. ``ack_timeout`` seconds before the first republish."""

    def __init__(self, ack_timeout: float, max_backoff: float | None = None) -> None:
        if not ack_timeout > 0:
            raise ValueError(f"ack_timeout must be > 0 seconds, not {ack_timeout!r}")
        self.ack_timeout = ack_timeout
        self.max_backoff = max_backoff if max_backoff is not None else 8 * ack_timeout
        self.pending: Pending | None = None
        self.sent = 0  # distinct updates published (republications not counted)
        self.republished = 0
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.superseded = 0
        self.uncarried = 0  # superseded numbers dropped from the carried list (the server may never hear)
        self._unconfirmed: OrderedDict[int, None] = OrderedDict()  # superseded, server has not answered
        self._superseded: OrderedDict[int, None] = OrderedDict()  # superseded: a verdict may still convert
        self._done: OrderedDict[int, None] = OrderedDict()  # numbers with their final verdict

    # -- publishing ----------------------------------------------------------------------------

    def supersede(self) -> tuple[int, ...]:
        """Make way for a new update: the pending one (if any) is superseded. Returns the superseded
        numbers the new update must carry (oldest first, at most :data:`MAX_CARRIED`)."""
        if self.pending is not None:
            seq, self.pending = self.pending.seq, None
            self.superseded += 1
            _remember(self._superseded, seq)
            self._unconfirmed[seq] = None
            while len(self._unconfirmed) > MAX_CARRIED:
                self._unconfirmed.popitem(last=False)
                self.uncarried += 1
        return tuple(self._unconfirmed)

    def published(self, seq: int, payload: bytes, now: float) -> None:
        """A new update went out (call :meth:`supersede` first: it replaces any pending one)."""
        if self.pending is not None:
            raise RuntimeError("supersede() the pending update before publishing a new one")
        self.pending = Pending(seq, payload, now, now + self.ack_timeout)
        self.sent += 1

    def due(self, now: float) -> Pending | None:
        """The pending update if its verdict is overdue; it is then counted as republished and its next
        deadline set (the wait doubles, up to ``max_backoff``). Publish its payload again."""
        p = self.pending
        if p is None or now < p.deadline:
            return None
        wait = min(self.ack_timeout * 2 ** p.attempts, self.max_backoff)
        p.attempts += 1
        p.deadline = now + wait
        self.republished += 1
        return p

    def next_deadline(self) -> float | None:
        return None if self.pending is None else self.pending.deadline

    # -- verdicts ------------------------------------------------------------------------------

    def verdict(self, seq: int, accepted: bool, reason: str) -> Outcome:
        """Take the server's verdict on update ``seq``; says what it changed."""
        if seq in self._done:
            return "repeat"
        if self.pending is not None and self.pending.seq == seq:
            self.pending = None
            self.settle(seq, accepted, reason)
            return "accepted" if accepted else "rejected"
        if seq in self._superseded:
            self._unconfirmed.pop(seq, None)
            if not accepted and reason == "superseded":
                return "confirmed"  # the server counted it superseded too
            # the server had it after all: it is counted under its verdict instead
            del self._superseded[seq]
            self.superseded -= 1
            self.settle(seq, accepted, reason)
            return "converted"
        return "unknown"

    def settle(self, seq: int, accepted: bool, reason: str) -> None:
        """Count a verdict on ``seq`` as final (for a caller that tracks no pending update itself:
        a client that trusts its broker's PUBACK; :meth:`verdict` does this for pending updates)."""
        if accepted:
            self.accepted += 1
        else:
            self.rejected[reason] += 1
        _remember(self._done, seq)

    # -- reporting -----------------------------------------------------------------------------

    @property
    def unconfirmed(self) -> int:
        return len(self._unconfirmed)

    def balanced(self) -> bool:
        """The ledger's invariant (every update counted once); for tests and assertions."""
        return self.sent == (self.accepted + sum(self.rejected.values()) + self.superseded
                             + (self.pending is not None))

    def snapshot(self) -> dict[str, int | dict[str, int]]:
        return {"updates_sent": self.sent, "updates_accepted": self.accepted,
                "updates_rejected": dict(self.rejected), "updates_superseded": self.superseded,
                "updates_pending": int(self.pending is not None), "updates_republished": self.republished,
                "superseded_unconfirmed": len(self._unconfirmed)}


def _remember(memory: OrderedDict[int, None], seq: int) -> None:
    memory[seq] = None
    while len(memory) > MEMORY:
        memory.popitem(last=False)
