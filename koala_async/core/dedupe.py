"""Per-sender sequence tracking: a QoS 1 redelivery is recognised, and one message cannot poison it.

For each sender the window keeps a *floor* (every number at or below it counts as seen) and the
``window`` largest accepted numbers above it. Accepting a number past a full window moves the
smallest one into the floor, so every number ever accepted stays "seen", out-of-order arrivals above
the floor are still accepted once, and the memory per sender is fixed (``window`` int64s).

**Range.** Senders number their messages from the wall clock in milliseconds (see :func:`next_seq`),
so a number far beyond both the sender's last one and the clock is not honest. A number is
``seq_out_of_range`` (refused, window untouched) when::

    seq > max(high + max_step, now_ms + slack_ms)        # high: the sender's largest accepted, or -1

``slack_ms`` (default 5 minutes) is how far a sender's clock may run ahead of the server's;
``max_step`` (default 10,000) lets a sender whose numbering runs a little ahead of the server's
clock keep going. A window restored from a checkpoint is clamped to ``now_ms + slack_ms``, so a
window poisoned before this check existed does not survive a restart.

**What a forger can do.** One forged number in range does not lock the sender out: it sits in the
window, and the sender's own (smaller, increasing) numbers are still above the floor and accepted.
Raising the floor past the sender's numbers takes ``window + 1`` accepted forged numbers, and even
then the floor is at most ``now_ms + slack_ms`` (plus ``max_step`` a message): a sender numbering
from its clock (:func:`next_seq`) passes it within ``slack_ms``; one counting up from its start time
(the old ``SeqCounter``) stays ``duplicate`` until it restarts. Signed updates (core/signing.py)
stop forgers altogether.

**Memory.** At most ``max_senders`` senders are tracked; past that the one least recently accepted
is forgotten. Its next accepted number becomes its new floor, so at most one of its older messages
can be accepted again, and only if it is also newer than every older message replayed after it: a
replay of captured messages is accepted in increasing order at most once each, and each must still
pass the staleness cut-off (``max_staleness`` versions) and is that sender's own genuine update. With
signed updates (core/signing.py) only key holders reach the window, so ``max_senders`` at least the
number of keys means nothing is ever forgotten. Memory is about 700 bytes a sender with the default
window of 64 (about 45 MiB at the default cap of 65,536).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

DUPLICATE = "duplicate"
OUT_OF_RANGE = "seq_out_of_range"
_LEGACY_WINDOW = 256  # the number-space window of the state format before floors (sorted + [high])


def next_seq(previous: int, now_ms: int) -> int:
    """The next sequence number of a sender: ``max(previous + 1, now_ms)``.

    Tracking the clock (rather than counting up from the start time) keeps a sender's numbers near
    every receiver's ``now_ms``, so a window pushed ahead by a forged number catches up within
    ``slack_ms``, and a sender restarted without saved state still numbers above its past.
    """
    return max(previous + 1, now_ms)


@dataclass(frozen=True)
class SeqBounds:
    """How far a sequence number may run ahead, and how many senders are tracked (see module doc)."""

    max_step: int = 10_000
    slack_ms: int = 5 * 60 * 1000
    max_senders: int = 65_536

    def limit(self, high: int, now_ms: int) -> int:
        """The largest acceptable number for a sender whose largest accepted one is ``high``."""
        return max(high + self.max_step, now_ms + self.slack_ms)


class _Sender:
    __slots__ = ("floor", "recent")

    def __init__(self, floor: int) -> None:
        self.floor = floor
        self.recent = array("q")  # sorted, all above floor

    def copy(self) -> _Sender:
        twin = _Sender(self.floor)
        twin.recent = array("q", self.recent)
        return twin

    @property
    def high(self) -> int:
        return self.recent[-1] if self.recent else self.floor

    def has(self, seq: int) -> bool:
        if seq <= self.floor:
            return True
        i = bisect_left(self.recent, seq)
        return i < len(self.recent) and self.recent[i] == seq


class SeqWindow:
    """Which sequence numbers each sender has had accepted (see the module docstring)."""

    def __init__(self, window: int = 64, bounds: SeqBounds = SeqBounds()) -> None:
        if window < 1:
            raise ValueError("a sequence window holds at least one number")
        self._window = window
        self.bounds = bounds
        self._senders: OrderedDict[str, _Sender] = OrderedDict()  # least recently accepted first
        self.forgotten = 0  # senders dropped past max_senders

    def check(self, sender: str, seq: int, now_ms: int | None) -> str | None:
        """``None`` when ``seq`` is new and in range, else ``"duplicate"`` or ``"seq_out_of_range"``.

        ``now_ms`` is the receiver's wall clock in milliseconds; ``None`` skips the range check (only
        for callers that have no clock, such as tests of redelivery alone)."""
        entry = self._senders.get(sender)
        if entry is not None and entry.has(seq):
            return DUPLICATE
        if now_ms is not None and seq > self.bounds.limit(-1 if entry is None else entry.high, now_ms):
            return OUT_OF_RANGE
        return None

    def seen(self, sender: str, seq: int) -> bool:
        """Whether ``seq`` from ``sender`` was accepted before (or lies at or below its floor)."""
        entry = self._senders.get(sender)
        return entry is not None and entry.has(seq)

    def add(self, sender: str, seq: int, now_ms: int | None = None) -> bool:
        """Record ``seq`` as accepted; ``False`` (and nothing recorded) if :meth:`check` refuses it."""
        if self.check(sender, seq, now_ms) is not None:
            return False
        entry = self._senders.get(sender)
        if entry is None:
            # Unknown, or forgotten: whatever it sent before this is treated as seen (module doc).
            entry = self._senders[sender] = _Sender(seq - 1)
            while len(self._senders) > self.bounds.max_senders:
                self._senders.popitem(last=False)
                self.forgotten += 1
        else:
            # Copy on write: a frozen() view may still hold the old entry.
            entry = self._senders[sender] = entry.copy()
            self._senders.move_to_end(sender)
        recent = entry.recent
        recent.insert(bisect_left(recent, seq), seq)
        if len(recent) > self._window:  # the smallest joins the floor: still seen, no longer stored
            entry.floor = max(entry.floor, recent.pop(0))
        return True

    def high(self, sender: str) -> int:
        """The sender's largest accepted number, or -1."""
        entry = self._senders.get(sender)
        return -1 if entry is None else entry.high

    def frozen(self) -> SeqWindow:
        """A copy that later changes to this window do not reach (entries are copied on write), made
        without walking the senders' numbers: a checkpoint captures it on the event loop and turns it
        into :meth:`to_state` data in its own thread."""
        twin = SeqWindow(self._window, self.bounds)
        twin._senders = self._senders.copy()
        twin.forgotten = self.forgotten
        return twin

    def to_state(self) -> dict[str, dict[str, Any]]:
        """Plain data for a checkpoint: ``{sender: {"floor": int, "recent": [int, ...]}}``, least
        recently accepted sender first."""
        return {sender: {"floor": e.floor, "recent": e.recent.tolist()} for sender, e in self._senders.items()}

    @classmethod
    def from_state(cls, state: dict[str, Any], window: int = 64, bounds: SeqBounds = SeqBounds(), *,
                   now_ms: int | None = None) -> SeqWindow:
        """A window from :meth:`to_state` output, or from the older ``{sender: sorted(recent) + [high]}``
        form. With ``now_ms``, numbers beyond ``now_ms + slack_ms`` are dropped (a window poisoned
        before the range check existed is repaired); a sender left with nothing is forgotten."""
        win = cls(window, bounds)
        cap = None if now_ms is None else now_ms + bounds.slack_ms
        for sender, value in state.items():
            if isinstance(value, dict):
                floor, recent = int(value["floor"]), [int(s) for s in value["recent"]]
            else:
                *recent, high = (int(s) for s in value)
                floor = high - _LEGACY_WINDOW
            if cap is not None:
                floor = min(floor, cap)
                recent = [s for s in recent if s <= cap]
            recent = sorted(s for s in set(recent) if s > floor)
            if len(recent) > window:  # a smaller window than the one saved: the rest joins the floor
                floor, recent = recent[-window - 1], recent[-window:]
            if not recent and floor < 0:
                continue
            entry = _Sender(floor)
            entry.recent.extend(recent)
            win._senders[str(sender)] = entry
        while len(win._senders) > bounds.max_senders:
            win._senders.popitem(last=False)
        return win

    def __len__(self) -> int:
        return len(self._senders)
