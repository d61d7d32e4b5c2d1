"""Counting exceptions that a message handler raised, by class, with logging a flood cannot multiply.

A node hands every incoming message to a handler (the server's ingest, a client's receive loop); an
exception there is a bug or an input nobody foresaw, and it must cost one message, never the node.
:class:`FaultCounter` records it: the count per exception class name (at most ``max_classes`` names;
later ones are counted under ``"other"``), the first of each class logged with its traceback, later
ones summarised at most once per ``interval`` seconds ("... 1,204 more since"). Counts are exact
whatever is logged; the clock is injected, so tests need no sleeping. Like
:class:`~koala_async.core.rejects.RejectCounter`, which does the same for refused messages.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
OTHER = "other"


class FaultCounter:
    def __init__(self, logger: logging.Logger, what: str, interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, max_classes: int = 32) -> None:
        self.logger = logger
        self.what = what  # e.g. "c3: the receive loop" (the log line's subject)
        self.interval = interval
        self.clock = clock
        self.max_classes = max_classes
        self.counts: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, exc: BaseException, origin: str = "") -> None:
        """Count ``exc`` (raised while handling a message from ``origin``) and maybe log it."""
        name = type(exc).__name__
        if name not in self.counts and len(self.counts) >= self.max_classes:
            name = OTHER
        self.counts[name] += 1
        now = self.clock()
        last = self._logged_at.get(name)
        if last is None:
            self._logged_at[name] = now
            self.logger.error("%s failed on a message from %s; message dropped (repeats are counted, and "
                              "summarised every %.0fs)", self.what, origin[:200] or "?", self.interval,
                              exc_info=exc)
        elif now - last >= self.interval:
            self._logged_at[name] = now
            self.logger.error("%s failed on %d more messages with %s since the last report (latest from %s: %s)",
                              self.what, self._unlogged[name] + 1, name, origin[:200] or "?", str(exc)[:200])
            self._unlogged[name] = 0
        else:
            self._unlogged[name] += 1

    def guard(self, handler: Callable[[T], None], origin: Callable[[T], str] = str) -> Callable[[T], None]:
        """``handler`` made safe: an ``Exception`` it raises is recorded (``origin(message)`` names where
        the message came from) instead of propagating."""
        def guarded(message: T) -> None:
            try:
                handler(message)
            except Exception as exc:  # noqa: BLE001 - the point: one message, never the node
                self.record(exc, origin(message))

        return guarded
