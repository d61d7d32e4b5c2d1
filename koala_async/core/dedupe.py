"""Per-sender sequence tracking, so a QoS 1 redelivery is recognised and ignored."""

from __future__ import annotations

from collections import deque


class SeqWindow:
    """Remembers which sequence numbers each sender has had accepted.

    Keeps a high-water mark plus a small window of recent numbers per sender, so out-of-order
    delivery inside the window is still accepted once and only once.
    """

    def __init__(self, window: int = 256) -> None:
        self._window = window
        self._seen: dict[str, tuple[int, set[int], deque[int]]] = {}

    def seen(self, sender: str, seq: int) -> bool:
        entry = self._seen.get(sender)
        if entry is None:
            return False
        high, recent, _ = entry
        return seq in recent or seq <= high - self._window

    def add(self, sender: str, seq: int) -> None:
        entry = self._seen.get(sender)
        high, recent, order = (-1, set(), deque()) if entry is None else entry
        recent.add(seq)
        order.append(seq)
        if len(order) > self._window:  # one in, at most one out
            recent.discard(order.popleft())
        if entry is None or seq > high:
            self._seen[sender] = (max(high, seq), recent, order)

    def high(self, sender: str) -> int:
        entry = self._seen.get(sender)
        return -1 if entry is None else entry[0]

    def to_state(self) -> dict[str, list[int]]:
        return {sender: sorted(recent) + [high] for sender, (high, recent, _) in self._seen.items()}

    @classmethod
    def from_state(cls, state: dict[str, list[int]], window: int = 256) -> SeqWindow:
        win = cls(window)
        for sender, values in state.items():
            *recent, high = values
            for seq in recent:
                win.add(sender, seq)
            if high >= 0:
                entry = win._seen.get(sender, (-1, set(), deque()))
                win._seen[sender] = (max(entry[0], high), entry[1], entry[2])
        return win

    def __len__(self) -> int:
        return len(self._seen)
