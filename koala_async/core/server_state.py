"""The server's protocol state, sans-IO: verdicts, dedupe, pending arrivals, presence and counters.

Like h11's connection state, :class:`ServerState` is fed decoded messages and ``now`` and returns
decisions; it does no I/O, starts no task and imports no asyncio, torch or aiomqtt. The server node
(``koala_async.nodes.server``) wires it between its transport and its learner:

1. a decoded message from ``clients/<id>/update`` goes to :meth:`ServerState.decide`, which runs the
   learner's admission (which kind of message, which checks) and the pacing's gate (a round may refuse
   it), counts a refusal by reason and returns a :class:`Verdict`;
2. the node makes an accepted message durable (journal), then :meth:`ServerState.accept` counts it
   and queues it as an :class:`Arrival`;
3. the node's learn loop :meth:`takes <ServerState.take>` the pending arrivals as a batch, the learner
   fuses and trains, and :meth:`ServerState.published` records the new version and each arrival's
   latency from acceptance to publication.

A status message goes to :meth:`ServerState.on_status`, which keeps bounded presence per client.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from koala_async.core.admission import Decision
from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import Message, Status
from koala_async.core.rejects import RejectCounter

log = logging.getLogger(__name__)

# The learner's admission: (message, client id from the topic, server version, dedupe window, wall clock
# in ms) -> a decision, or None when this mode takes no message of that kind.
Admission = Callable[[Message, "str | None", int, SeqWindow, "int | None"], "Decision | None"]
# The pacing's gate on an otherwise admissible message: "accepted" or why not (a round's verdict).
Gate = Callable[[Any], str]

STALENESS_BUCKETS = 32  # staleness histogram: "0".."31" and "32+"
MAX_LISTED_CLIENTS = 1_000  # per-client maps in the status (decodable: msgpack maps <= 4096 keys)
MAX_PRESENCE = 100_000  # clients whose presence is remembered; the longest-offline are forgotten first


class Arrival(NamedTuple):
    """An accepted message waiting for the learner."""

    message: Any  # an Update (KOALA) or Weights (FedAvg)
    envelope: bytes  # what was journaled (b"" when the mode keeps no journal record)
    arrived: float  # ``now`` at acceptance


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str
    staleness: int
    client: str
    seq: int


@dataclass
class Presence:
    online: bool
    state: str
    tier: str | None
    seen: float


@dataclass
class ServerMetrics:
    accepted: int = 0
    staleness_sum: int = 0
    staleness_max: int = 0
    update_bytes: int = 0
    knowledge_bytes: int = 0
    distill_seconds: float = 0.0
    distill_steps_skipped: int = 0  # steps a version's latency budget cut short
    timeline: list[tuple[float, int, float]] = field(default_factory=list)
    accepted_by_client: dict[str, int] = field(default_factory=dict)
    staleness_hist: dict[str, int] = field(default_factory=dict)
    # Staleness when fused (the version the learner applied an arrival at, minus its base): what the
    # staleness rule weighs. An update accepted while a version was being distilled is fused into the
    # next one, one version older than it was at acceptance.
    fused: int = 0
    fused_staleness_sum: int = 0
    fused_staleness_max: int = 0
    fused_staleness_hist: dict[str, int] = field(default_factory=dict)

    @property
    def staleness_mean(self) -> float:
        return self.staleness_sum / self.accepted if self.accepted else 0.0

    @property
    def fused_staleness_mean(self) -> float:
        return self.fused_staleness_sum / self.fused if self.fused else 0.0


def always_open(_message: object) -> str:
    """The gate of a mode without rounds."""
    return "accepted"


class ServerState:
    """See the module docstring. ``admission`` comes from the learner, ``gate`` from the pacing."""

    def __init__(self, admission: Admission, gate: Gate = always_open, *, latency_window: float = 30.0,
                 rejects: RejectCounter | None = None) -> None:
        self.admission = admission
        self.gate = gate
        self.latency_window = latency_window
        self.version = 0
        self.seen = SeqWindow()
        self.metrics = ServerMetrics()
        self.rejects = rejects or RejectCounter(log)
        self.pending: list[Arrival] = []
        self.in_flight = 0  # taken by the learner, not yet published: still "pending" to observers
        self.presence: OrderedDict[str, Presence] = OrderedDict()  # least recently heard from first
        self.online_count = 0
        # (published at, seconds from acceptance to the publication of the version that fused it)
        self.fuse_latency: deque[tuple[float, float]] = deque(maxlen=20_000)
        self.dirty = False  # counters moved since the last checkpoint

    # -- updates -------------------------------------------------------------------------------

    def decide(self, message: Message, topic_sender: str | None, size: int, origin: str = "",
               now_ms: int | None = None) -> Verdict | None:
        """The verdict on a decoded message from an update topic; a refusal is counted here.

        None when the message is of a kind this mode does not take on update topics (counted as
        ``wrong_kind``; no verdict goes back for it).
        """
        decision = self.admission(message, topic_sender, self.version, self.seen, now_ms)
        if decision is None:
            self.rejects.reject("wrong_kind", type(message).__name__, origin)
            return None
        self.metrics.update_bytes += size
        sender, seq = getattr(message, "sender", "?"), getattr(message, "seq", -1)
        reason = decision.reason if not decision.accepted else self.gate(message)
        if reason != "accepted":
            self.rejects.reject(reason, f"seq={seq}", sender)
        return Verdict(reason == "accepted", reason, decision.staleness, topic_sender or sender, seq)

    def accept(self, message: Any, envelope: bytes, staleness: int, now: float, now_ms: int | None = None) -> None:
        """Count an accepted message and queue it for the learner (once the caller made it durable)."""
        self.seen.add(message.sender, message.seq, now_ms)
        m = self.metrics
        m.accepted += 1
        m.accepted_by_client[message.sender] = m.accepted_by_client.get(message.sender, 0) + 1
        m.staleness_sum += staleness
        m.staleness_max = max(m.staleness_max, staleness)
        bucket = str(staleness) if staleness < STALENESS_BUCKETS else f"{STALENESS_BUCKETS}+"
        m.staleness_hist[bucket] = m.staleness_hist.get(bucket, 0) + 1
        self.pending.append(Arrival(message, envelope, now))
        self.dirty = True

    def take(self, limit: int | None = None) -> list[Arrival]:
        """Hand the pending arrivals (up to ``limit``, oldest first) to the learner."""
        if limit is None or limit >= len(self.pending):
            batch, self.pending = self.pending, []
        else:
            batch, self.pending = self.pending[:limit], self.pending[limit:]
        self.in_flight = len(batch)
        return batch

    def published(self, version: int, batch: Iterable[Arrival], now: float, elapsed: float,
                  accuracy: float) -> None:
        """Version ``version`` is out: it fused ``batch``."""
        self.version = version
        self.in_flight = 0
        m = self.metrics
        for arrival in batch:
            base = getattr(arrival.message, "base_version", None)
            if isinstance(base, int):
                staleness = max(0, version - 1 - base)  # fused at version - 1, published as version
                m.fused += 1
                m.fused_staleness_sum += staleness
                m.fused_staleness_max = max(m.fused_staleness_max, staleness)
                bucket = str(staleness) if staleness < STALENESS_BUCKETS else f"{STALENESS_BUCKETS}+"
                m.fused_staleness_hist[bucket] = m.fused_staleness_hist.get(bucket, 0) + 1
        self.fuse_latency.extend((now, now - a.arrived) for a in batch)
        self.metrics.timeline.append((round(elapsed, 3), version, accuracy))

    # -- presence ------------------------------------------------------------------------------

    def on_status(self, status: Status, topic_sender: str | None, now: float) -> bool:
        """Take a client's status; True when its availability changed (round pacing cares)."""
        if status.sender != topic_sender:
            self.rejects.reject("sender_mismatch", "status", topic_sender or "?")
            return False
        tier = status.info.get("tier") if isinstance(status.info, dict) else None
        old = self.presence.pop(status.sender, None)
        self.presence[status.sender] = Presence(status.online, status.state[:64],
                                                tier[:64] if isinstance(tier, str) else None, now)
        self.online_count += int(status.online) - int(old.online if old else False)
        while len(self.presence) > MAX_PRESENCE:
            _, gone = self.presence.popitem(last=False)
            self.online_count -= int(gone.online)
        return old is None or old.online != status.online or old.state != status.state

    def available(self) -> set[str]:
        """Clients that can take part in a round: online and not done."""
        return {cid for cid, p in self.presence.items() if p.online and p.state != "done"}

    # -- reporting -----------------------------------------------------------------------------

    def latency(self, now: float, window: float | None = None) -> dict[str, float | int]:
        since = None if window is None else now - window
        return latency_summary(lat for at, lat in self.fuse_latency if since is None or at >= since)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The protocol counters as published in the status (bounded whatever the fleet size)."""
        m = self.metrics
        by_client = m.accepted_by_client
        listed = len(by_client) <= MAX_LISTED_CLIENTS
        online = [cid for cid, p in self.presence.items() if p.online] if self.online_count <= 64 else []
        return {
            "version": self.version,
            "accepted": m.accepted,
            "accepted_by_client": dict(by_client) if listed else {},
            "clients_accepted": len(by_client),
            "rejected": dict(self.rejects.counts),
            "staleness_mean": round(m.staleness_mean, 4),
            "staleness_max": m.staleness_max,
            "staleness_hist": dict(m.staleness_hist),
            "fused_staleness_mean": round(m.fused_staleness_mean, 4),
            "fused_staleness_max": m.fused_staleness_max,
            "fused_staleness_hist": dict(m.fused_staleness_hist),
            "pending": len(self.pending) + self.in_flight,
            "update_bytes": m.update_bytes,
            "knowledge_bytes": m.knowledge_bytes,
            "distill_seconds": round(m.distill_seconds, 3),
            "distill_steps_skipped": m.distill_steps_skipped,
            "fuse_latency": self.latency(now),
            "fuse_latency_recent": self.latency(now, self.latency_window),
            "clients_online": sorted(online),
            "clients_online_count": self.online_count,
        }


def latency_summary(samples: Iterable[float]) -> dict[str, float | int]:
    """Count, p50, p99 and max of latency samples in seconds (zeros when there are none)."""
    values = sorted(samples)
    if not values:
        return {"count": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}

    def pct(q: float) -> float:  # linear interpolation, as numpy.percentile's default
        pos = (len(values) - 1) * q
        lo = int(pos)
        hi = min(lo + 1, len(values) - 1)
        return values[lo] + (values[hi] - values[lo]) * (pos - lo)

    return {"count": len(values), "p50": round(pct(0.5), 4), "p99": round(pct(0.99), 4),
            "max": round(values[-1], 4)}
