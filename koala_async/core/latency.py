"""Latency summaries in constant memory and time: count, p50, p99 and max, all-time and over a window.

The server reports each update's arrival-to-fused latency in every status it publishes (each second,
and after every version). Sorting the last 20,000 samples there cost milliseconds of the event loop per
status at scale; :class:`LatencyStats` instead files each sample in a log-spaced bucket (``growth`` 1.04:
a quantile is reported within 2% of the true sample's value), so a sample costs O(1) and a summary
O(buckets) (about 470), whatever the rate of arrivals.

The recent window is kept in slots of ``resolution`` seconds (a sparse bucket count and a max each);
slots older than ``window`` are subtracted as time moves on, each once. Counts and maxima are exact.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

LOWEST = 1e-4  # seconds: the first bucket holds everything faster than this
HIGHEST = 1e4  # seconds: the last bucket holds everything slower


@dataclass
class _Slot:
    start: int  # slot number: int(now / resolution)
    counts: dict[int, int] = field(default_factory=dict)
    max: float = 0.0


class LatencyStats:
    def __init__(self, window: float, resolution: float = 1.0, growth: float = 1.04) -> None:
        if window <= 0 or resolution <= 0 or growth <= 1:
            raise ValueError("need window > 0, resolution > 0 and growth > 1")
        self.window = window
        self.resolution = resolution
        self._log_growth = math.log(growth)
        self._growth = growth
        self._size = int(math.log(HIGHEST / LOWEST) / self._log_growth) + 2
        self._all = [0] * self._size
        self._all_count = 0
        self._all_max = 0.0
        self._recent = [0] * self._size
        self._recent_count = 0
        self._slots: deque[_Slot] = deque()

    def _bucket(self, latency: float) -> int:
        if latency <= LOWEST:
            return 0
        return min(self._size - 1, 1 + int(math.log(latency / LOWEST) / self._log_growth))

    def _value(self, bucket: int) -> float:
        """A bucket's representative value: the geometric middle of its bounds."""
        if bucket == 0:
            return LOWEST
        return LOWEST * self._growth ** (bucket - 0.5)

    def add(self, now: float, latency: float) -> None:
        latency = max(0.0, latency)
        b = self._bucket(latency)
        self._all[b] += 1
        self._all_count += 1
        self._all_max = max(self._all_max, latency)
        slot_no = int(now / self.resolution)
        if not self._slots or self._slots[-1].start != slot_no:
            self._slots.append(_Slot(slot_no))
        slot = self._slots[-1]
        slot.counts[b] = slot.counts.get(b, 0) + 1
        slot.max = max(slot.max, latency)
        self._recent[b] += 1
        self._recent_count += 1
        self._expire(now)

    def _expire(self, now: float) -> None:
        oldest = int((now - self.window) / self.resolution)
        while self._slots and self._slots[0].start < oldest:
            for b, n in self._slots.popleft().counts.items():
                self._recent[b] -= n
                self._recent_count -= n

    def summary(self, now: float | None = None) -> dict[str, float | int]:
        """All samples (``now`` None), or those of the last ``window`` seconds before ``now``."""
        if now is None:
            return self._summarise(self._all, self._all_count, self._all_max)
        self._expire(now)
        recent_max = max((s.max for s in self._slots), default=0.0)
        return self._summarise(self._recent, self._recent_count, recent_max)

    def _summarise(self, counts: list[int], total: int, top: float) -> dict[str, float | int]:
        if total == 0:
            return {"count": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
        return {"count": total, "p50": round(min(top, self._quantile(counts, total, 0.5)), 4),
                "p99": round(min(top, self._quantile(counts, total, 0.99)), 4), "max": round(top, 4)}

    def _quantile(self, counts: list[int], total: int, q: float) -> float:
        rank = max(1, math.ceil(q * total))  # the rank-th smallest sample
        seen = 0
        for b, n in enumerate(counts):
            seen += n
            if seen >= rank:
                return self._value(b)
        return self._value(len(counts) - 1)  # pragma: no cover - counts sum to total
