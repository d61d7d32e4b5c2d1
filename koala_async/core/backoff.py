"""Capped exponential backoff with full jitter (AWS architecture blog, 2015).

Full jitter spreads reconnecting nodes over the whole window, so a broker or server restart is not met
by a synchronized reconnect storm.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0

    def ceiling(self, attempt: int) -> float:
        """The largest delay for retry number ``attempt`` (0-based)."""
        return min(self.cap, self.initial * self.factor ** min(attempt, 64))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """A random delay in ``[initial / 2, ceiling(attempt)]``."""
        top = self.ceiling(attempt)
        low = min(self.initial / 2, top)
        return low + (rng or random).random() * (top - low)
