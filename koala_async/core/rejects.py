"""Counting dropped messages by reason, with logging that a flood cannot turn into a log flood.

The first drop of each reason is logged at once with its detail; later drops of that reason are
counted and summarised at most once per ``interval`` seconds ("... 1,204 more since"). Counts are
exact whatever is logged. The clock is injected, so tests need no sleeping.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable


class RejectCounter:
    def __init__(self, logger: logging.Logger, interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.counts: Counter[str] = Counter()
        # Told each reason as it is counted (O(1); e.g. the node's Prometheus metrics), if set.
        self.listener: Callable[[str], None] | None = None
        self._logged_at: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def reject(self, reason: str, detail: str = "", origin: str = "") -> None:
        self.counts[reason] += 1
        if self.listener is not None:
            self.listener(reason)
        now = self.clock()
        last = self._logged_at.get(reason)
        if last is None:
            self._logged_at[reason] = now
            self.logger.warning("dropped a message from %s: %s %s (repeats are counted, and summarised "
                                "every %.0fs)", origin or "?", reason, detail[:200], self.interval)
        elif now - last >= self.interval:
            self._logged_at[reason] = now
            self.logger.warning("dropped %d more messages for %s since the last report (latest from %s: %s)",
                                self._unlogged[reason] + 1, reason, origin or "?", detail[:200])
            self._unlogged[reason] = 0
        else:
            self._unlogged[reason] += 1

    def error(self, exc: Exception, origin: str = "") -> None:
        """Count a :class:`~koala_async.errors.MessageError` (its ``reason``)."""
        self.reject(getattr(exc, "reason", type(exc).__name__), getattr(exc, "detail", ""), origin)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
