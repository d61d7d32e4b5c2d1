"""CPU accounting for the benchmarks, from ``/proc`` (Linux): a process's CPU seconds split into its main
thread (the node's event loop: ingest, verdicts, acks, status) and its other threads (the learner's
worker threads), and the whole machine's busy share, so a figure per arrival can be told apart from
the load other programs put on a shared machine."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _thread_seconds(stat: Path) -> float:
    """utime + stime of one ``/proc/.../stat`` file, in seconds (0 when it vanished)."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of proc(5), after the name


@dataclass(frozen=True)
class CpuSample:
    total: float  # seconds, every thread of the process (exited threads included: the process's count)
    main: float  # seconds, the main thread (where asyncio runs the node)

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(self.total - other.total, self.main - other.main)

    @property
    def others(self) -> float:
        return self.total - self.main


def process_cpu(pid: int) -> CpuSample:
    """CPU seconds used so far by ``pid`` (all threads) and by its main thread."""
    return CpuSample(_thread_seconds(Path(f"/proc/{pid}/stat")), _thread_seconds(Path(f"/proc/{pid}/task/{pid}/stat")))


@dataclass(frozen=True)
class MachineSample:
    busy: float  # jiffies not idle or iowait, all CPUs
    total: float

    def busy_share(self, earlier: MachineSample) -> float | None:
        """The share of all CPUs busy between ``earlier`` and this sample (0..1)."""
        span = self.total - earlier.total
        return None if span <= 0 else (self.busy - earlier.busy) / span


def machine_cpu() -> MachineSample:
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return MachineSample(0.0, 0.0)
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return MachineSample(float(sum(values) - idle), float(sum(values)))
