"""The churn timeline, pure: scenario events expanded into primitive node actions, a scheduler fed
``now`` that returns what is due, target resolution, and availability traces turned into events.

Nothing here touches a process, a clock or the network, so the whole timeline is testable with a fake
clock. The runner (``tools/runner.py``) applies the primitive actions with real signals.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

# What a scenario may say (events[].action) -> the primitive actions it becomes: (offset, action),
# where offset "d" means "after the event's duration".
ACTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "join": (("0", "start"),),          # start the process (again)
    "leave": (("0", "stop"),),          # SIGTERM: graceful, the node says goodbye
    "crash": (("0", "kill"),),          # SIGKILL: the broker publishes the node's last will
    "straggle": (("0", "pause"), ("d", "resume")),    # SIGSTOP, then SIGCONT after duration
    "disconnect": (("0", "cut"), ("d", "restore")),   # cut the client's TCP link to the broker
    "restart": (("0", "kill"), ("d", "start")),       # SIGKILL, then start again after duration
}
DOWN_ACTIONS = ("stop", "kill", "pause", "cut")
SHARES = {"half": 1 / 2, "third": 1 / 3, "quarter": 1 / 4, "fifth": 1 / 5, "tenth": 1 / 10}


@dataclass(frozen=True)
class Event:
    """One primitive action on one node at ``at`` seconds after the run started."""

    at: float
    action: str  # start | stop | kill | pause | resume | cut | restore
    target: str  # a client id, "server", "broker" (the first broker) or "broker-N" (the N-th)
    origin: str = ""  # where it came from: "events[3]" or "availability"
    order: int = 0  # ties at the same time keep file order

    @staticmethod
    def expand(at: float, action: str, targets: list[str], duration: float, origin: str = "") -> list[Event]:
        out: list[Event] = []
        for n, (offset, primitive) in enumerate(ACTIONS[action]):
            when = at + (duration if offset == "d" else 0.0)
            out.extend(Event(when, primitive, t, origin, n) for t in targets)
        return out

    def describe(self) -> str:
        return f"{self.action} {self.target}" + (f" ({self.origin})" if self.origin else "")


class Scheduler:
    """Hands out events as their time comes: ``due(now)`` returns those with ``at <= now``, once each,
    in time order."""

    def __init__(self, events: list[Event] | tuple[Event, ...]) -> None:
        self._pending = sorted(events, key=lambda e: (e.at, e.order))
        self.fired: list[tuple[float, Event]] = []

    def due(self, now: float) -> list[Event]:
        count = 0
        while count < len(self._pending) and self._pending[count].at <= now:
            count += 1
        ready, self._pending = self._pending[:count], self._pending[count:]
        self.fired.extend((now, e) for e in ready)
        return ready

    @property
    def done(self) -> bool:
        return not self._pending

    @property
    def next_at(self) -> float | None:
        return self._pending[0].at if self._pending else None


def broker_names(count: int) -> list[str]:
    """The process names of a run's ``count`` brokers: "broker", then "broker-2", "broker-3"..."""
    return ["broker"] + [f"broker-{n}" for n in range(2, count + 1)]


def resolve_target(target: str, client_ids: list[str], groups: dict[str, list[str]],
                   brokers: int = 1) -> list[str]:
    """Node ids a target names: "server", "broker" (the first broker), "broker-N" (the N-th of
    ``brokers``), "clients", a client id, a group prefix, or a share: "third of clients", "quarter of
    workers", "1/3 of clients", "25% of clients", "2 of clients". A share takes the first
    ``max(1, round(share * n))`` ids in order, so a file names the same nodes every run."""
    text = target.strip()
    if text in ("server", "broker"):
        return [text]
    if re.fullmatch(r"broker-\d+", text):
        if text not in broker_names(brokers):
            raise ValueError(f"target {target!r}: the run has {brokers} broker(s): {broker_names(brokers)}")
        return [text]
    if text in ("clients", "all clients", "all"):
        return list(client_ids)
    if text in client_ids:
        return [text]
    if text in groups:
        return list(groups[text])
    match = re.fullmatch(r"(?:an?\s+|one\s+)?(\S+)\s+of\s+(?:the\s+)?(.+)", text)
    if match:
        amount, pool_name = match.groups()
        pool = client_ids if pool_name in ("clients", "all clients") else groups.get(pool_name)
        if pool is None:
            raise ValueError(f"target {target!r}: {pool_name!r} is not 'clients' or a group prefix "
                             f"{sorted(groups)}")
        if amount in SHARES:
            k = max(1, round(SHARES[amount] * len(pool)))
        elif re.fullmatch(r"\d+/\d+", amount):
            num, den = (int(x) for x in amount.split("/"))
            k = max(1, round(num / den * len(pool)))
        elif re.fullmatch(r"\d+(\.\d+)?%", amount):
            k = max(1, round(float(amount[:-1]) / 100 * len(pool)))
        elif amount.isdigit():
            k = int(amount)
        else:
            raise ValueError(f"target {target!r}: share {amount!r} is not one of {sorted(SHARES)}, "
                             "N/M, N% or a count")
        if not 0 < k <= len(pool):
            raise ValueError(f"target {target!r} selects {k} of {len(pool)} clients")
        return list(pool[:k])
    raise ValueError(f"target {target!r} is not 'server', 'broker', 'broker-N', 'clients', a client id, a "
                     f"group prefix {sorted(groups)} or a share like 'third of clients'")


def load_trace(path: Path) -> dict[str, list[list[float]]]:
    """Availability intervals from .json ({"id": [[start, end], ...]}) or .csv (client,start,end)."""
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("expected an object mapping client id to [[start, end], ...]")
        return {str(k): [[float(a), float(b)] for a, b in v] for k, v in data.items()}
    if path.suffix == ".csv":
        out: dict[str, list[list[float]]] = {}
        with path.open(newline="") as fh:
            for n, row in enumerate(csv.DictReader(fh), start=2):
                try:
                    out.setdefault(row["client"], []).append([float(row["start"]), float(row["end"])])
                except (KeyError, TypeError, ValueError):
                    raise ValueError(f"line {n}: expected columns client,start,end with numbers") from None
        return out
    raise ValueError("expected a .json or .csv file")


def availability_events(traces: dict[str, list[list[float]]], offline: str, duration: float) -> list[Event]:
    """Per client: absent before its first interval, ``offline`` ("leave" or "crash") at each end,
    "join" at each later start. Intervals reaching past ``duration`` need no end event."""
    events: list[Event] = []
    go = "stop" if offline == "leave" else "kill"
    for cid, intervals in sorted(traces.items()):
        spans = sorted((float(a), float(b)) for a, b in intervals)
        if not spans:
            raise ValueError(f"client {cid!r} has no availability interval")
        last_end = -math.inf
        for start, end in spans:
            if not start < end:
                raise ValueError(f"client {cid!r}: interval [{start}, {end}] must have start < end")
            if start < last_end:
                raise ValueError(f"client {cid!r}: intervals overlap at {start}")
            if start > 0:
                events.append(Event(start, "start", cid, "availability"))
            if end < duration:
                events.append(Event(end, go, cid, "availability"))
            last_end = end
    return events


def absent_at_start(traces: dict[str, list[list[float]]]) -> set[str]:
    """Clients whose first availability interval starts after 0."""
    return {cid for cid, spans in traces.items() if spans and min(a for a, _ in spans) > 0}
