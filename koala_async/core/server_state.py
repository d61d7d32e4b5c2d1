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

Clients keep an update until its verdict and republish it when none came (core/delivery.py): a copy
of an update already judged gets the same answer (an accepted one ``accepted=True, reason="duplicate"``)
from the :class:`~koala_async.core.verdicts.VerdictMemory`, counted as a ``duplicate`` delivery and
marked ``repeat``; the numbers an update says it supersedes go to :meth:`ServerState.withdraw` before
the update itself is decided. So every update a client published is counted once: ``accepted``,
``rejected`` by a reason other than ``duplicate``, or ``superseded``.

An optional :class:`StateListener` hears each count as it happens (O(1) per event): the node's
metrics adapter (``koala_async.nodes.telemetry``) feeds Prometheus from it.

Per-client state is bounded whatever the number of client ids (anyone on an open broker can make up
ten thousand): presence keeps at most ``MAX_PRESENCE`` clients, the accepted count per client at
most ``MAX_COUNTED_CLIENTS`` (updates from later ones are counted in ``accepted_uncounted``), and the online and
available sets are kept up to date as statuses arrive, so :meth:`ServerState.snapshot` (every
heartbeat, on the event loop) and :meth:`ServerState.available` never walk the clients.

Presence is kept per client while it is around: a client that leaves (goodbye ``online=false state=left``) or is lost (its last will,
``state=lost``) is forgotten here and queued as a *departure*, which the learn loop takes
(:meth:`ServerState.take_departures`) and hands to the learner with its next batch, so its
contribution to the fused targets goes too (the learner thread owns the fusion; the event loop never
touches it). Memory follows the clients present, not every client ever seen.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from koala_async.core.admission import Decision
from koala_async.core.dedupe import DUPLICATE, SeqWindow
from koala_async.core.envelope import Message, Status
from koala_async.core.latency import LatencyStats
from koala_async.core.rejects import RejectCounter
from koala_async.core.verdicts import SUPERSEDED, Answer, VerdictMemory

log = logging.getLogger(__name__)

# The learner's admission: (message, client id from the topic, server version, dedupe window, wall clock
# in ms) -> a decision, or None when this mode takes no message of that kind.
Admission = Callable[[Message, "str | None", int, SeqWindow, "int | None"], "Decision | None"]
# The pacing's gate on an otherwise admissible message: "accepted" or why not (a round's verdict).
Gate = Callable[[Any], str]

STALENESS_BUCKETS = 32  # staleness histogram: "0".."31" and "32+"
# Per-client maps and lists go into the status only when they are complete and this short: a status
# info map holds at most 256 entries (core/info.py), and a longer one would be cut silently; a status
# costs the same at 100 clients as at 100,000, and a fleet that large reads its metrics instead.
MAX_LISTED_CLIENTS = 200
MAX_LISTED_ONLINE = 64
MAX_PRESENCE = 100_000  # clients whose presence is remembered; the least recently heard from are forgotten
MAX_COUNTED_CLIENTS = 100_000  # clients whose accepted updates are counted one by one
DEPARTED = ("left", "lost")  # the states of a client that is gone: its goodbye, its last will


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
    repeat: bool = False  # an answer about an update judged before (a copy, or a superseded number)


class StateListener(Protocol):
    """Hears the protocol state's counts as they happen (each call O(1)); see the module docstring."""

    def accepted(self, staleness: int) -> None: ...

    def superseded(self) -> None: ...

    def fused(self, latency: float) -> None: ...

    def published(self, version: int) -> None: ...

    def distilled(self, seconds: float) -> None: ...

    def online(self, count: int) -> None: ...


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
    superseded: int = 0  # updates their clients replaced before the server had them
    timeline: list[tuple[float, int, float]] = field(default_factory=list)
    accepted_by_client: dict[str, int] = field(default_factory=dict)  # at most MAX_COUNTED_CLIENTS ids
    accepted_uncounted: int = 0  # accepted updates from clients past MAX_COUNTED_CLIENTS
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
        self.verdicts = VerdictMemory()
        self.listener: StateListener | None = None
        self.metrics = ServerMetrics()
        self.rejects = rejects or RejectCounter(log)
        self.pending: list[Arrival] = []
        self.in_flight = 0  # taken by the learner, not yet published: still "pending" to observers
        self.presence: OrderedDict[str, Presence] = OrderedDict()  # least recently heard from first
        self.online: dict[str, None] = {}  # clients whose presence says online (a set in arrival order)
        self.idle: set[str] = set()  # online and not done: who a round can select (see available())
        # seconds from acceptance to the publication of the version that fused it (core/latency.py)
        self.fuse_latency = LatencyStats(latency_window)
        self.departures: dict[str, None] = {}  # gone since the learner last took them (ordered set)
        self.dirty = False  # counters moved since the last checkpoint

    # -- updates -------------------------------------------------------------------------------

    def decide(self, message: Message, topic_sender: str | None, size: int, origin: str = "",
               now_ms: int | None = None) -> Verdict | None:
        """The verdict on a decoded message from an update topic; a refusal is counted here.

        None when the message is of a kind this mode does not take on update topics (counted as
        ``wrong_kind``; no verdict goes back for it).
        """
        sender, seq = getattr(message, "sender", "?"), getattr(message, "seq", -1)
        if topic_sender is None or sender == topic_sender:
            known = self.verdicts.recall(sender, seq)
            if known is not None:  # a copy of an update judged before: the same answer, counted once
                self.metrics.update_bytes += size
                return self._repeat(known, sender, seq)
        decision = self.admission(message, topic_sender, self.version, self.seen, now_ms)
        if decision is None:
            self.rejects.reject("wrong_kind", type(message).__name__, origin)
            return None
        self.metrics.update_bytes += size
        if decision.reason == DUPLICATE:  # seen, its answer forgotten: only accepted numbers are seen
            return self._repeat(Answer(True, DUPLICATE), sender, seq)
        reason = decision.reason if not decision.accepted else self.gate(message)
        if reason != "accepted":
            self.rejects.reject(reason, f"seq={seq}", sender)
            self.verdicts.remember(sender, seq, False, reason)
        return Verdict(reason == "accepted", reason, decision.staleness, topic_sender or sender, seq)

    def _repeat(self, known: Answer, sender: str, seq: int) -> Verdict:
        self.rejects.reject(DUPLICATE, f"seq={seq}", sender)  # a delivery, not another update
        return Verdict(known.accepted, DUPLICATE if known.accepted else known.reason, 0, sender, seq, repeat=True)

    def withdraw(self, message: Any, topic_sender: str | None, now_ms: int | None = None) -> list[Verdict]:
        """The numbers ``message`` (an Update) says it supersedes: each never seen is counted
        ``superseded`` once and marked seen (a late copy is refused, never fused over the newer update);
        returns the answer for each, to send back. Call before :meth:`decide` on ``message``."""
        numbers = getattr(message, "supersedes", ())
        sender, carrier = message.sender, message.seq
        if not numbers or (topic_sender is not None and sender != topic_sender):
            return []
        if self.verdicts.recall(sender, carrier) is not None or self.seen.seen(sender, carrier):
            return []  # a copy of an update whose list was handled when it first came
        answers = []
        for seq in numbers:
            if seq >= carrier:
                continue  # only an older update can be superseded by this one
            known = self.verdicts.recall(sender, seq)
            if known is not None:
                answers.append(Verdict(known.accepted, DUPLICATE if known.accepted else known.reason, 0,
                                       sender, seq, repeat=True))
            elif self.seen.seen(sender, seq):
                answers.append(Verdict(True, DUPLICATE, 0, sender, seq, repeat=True))
            elif self.seen.add(sender, seq, now_ms):
                self.verdicts.remember(sender, seq, False, SUPERSEDED)
                self.metrics.superseded += 1
                self.dirty = True
                if self.listener is not None:
                    self.listener.superseded()
                answers.append(Verdict(False, SUPERSEDED, 0, sender, seq, repeat=True))
        return answers

    def accept(self, message: Any, envelope: bytes, staleness: int, now: float, now_ms: int | None = None) -> None:
        """Count an accepted message and queue it for the learner (once the caller made it durable)."""
        self.seen.add(message.sender, message.seq, now_ms)
        self.verdicts.remember(message.sender, message.seq, True, "accepted")
        m = self.metrics
        m.accepted += 1
        by_client = m.accepted_by_client
        if message.sender in by_client or len(by_client) < MAX_COUNTED_CLIENTS:
            by_client[message.sender] = by_client.get(message.sender, 0) + 1
        else:
            m.accepted_uncounted += 1
        m.staleness_sum += staleness
        m.staleness_max = max(m.staleness_max, staleness)
        bucket = str(staleness) if staleness < STALENESS_BUCKETS else f"{STALENESS_BUCKETS}+"
        m.staleness_hist[bucket] = m.staleness_hist.get(bucket, 0) + 1
        self.pending.append(Arrival(message, envelope, now))
        self.dirty = True
        if self.listener is not None:
            self.listener.accepted(staleness)

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
        latencies = [now - a.arrived for a in batch]
        for latency in latencies:
            self.fuse_latency.add(now, latency)
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
        self.metrics.timeline.append((round(elapsed, 3), version, accuracy))
        if self.listener is not None:
            self.listener.published(version)
            for latency in latencies:
                self.listener.fused(latency)

    def distilled(self, seconds: float) -> None:
        """One learning pass took ``seconds``."""
        self.metrics.distill_seconds += seconds
        if self.listener is not None:
            self.listener.distilled(seconds)

    # -- presence ------------------------------------------------------------------------------

    def on_status(self, status: Status, topic_sender: str | None, now: float) -> bool:
        """Take a client's status; True when its availability changed (round pacing cares)."""
        if status.sender != topic_sender:
            self.rejects.reject("sender_mismatch", "status", topic_sender or "?")
            return False
        tier = status.info.get("tier") if isinstance(status.info, dict) else None
        old = self.presence.pop(status.sender, None)
        if not status.online and status.state in DEPARTED:
            self._index(status.sender, False, "")
            if self.listener is not None:
                self.listener.online(len(self.online))
            self.departures[status.sender] = None
            while len(self.departures) > MAX_PRESENCE:  # never taken (no learning): the oldest go
                del self.departures[next(iter(self.departures))]
            return old is not None
        self.departures.pop(status.sender, None)  # back before the learner took its departure
        self.presence[status.sender] = Presence(status.online, status.state[:64],
                                                tier[:64] if isinstance(tier, str) else None, now)
        self._index(status.sender, status.online, status.state)
        while len(self.presence) > MAX_PRESENCE:
            gone, _ = self.presence.popitem(last=False)
            self._index(gone, False, "")
        if self.listener is not None:
            self.listener.online(len(self.online))
        return old is None or old.online != status.online or old.state != status.state

    def _index(self, client: str, online: bool, state: str) -> None:
        if online:
            self.online[client] = None
        else:
            self.online.pop(client, None)
        if online and state != "done":
            self.idle.add(client)
        else:
            self.idle.discard(client)

    @property
    def online_count(self) -> int:
        return len(self.online)

    def take_departures(self) -> list[str]:
        """The clients that left or were lost since the last call, oldest first (for the learner)."""
        gone, self.departures = list(self.departures), {}
        return gone

    def available(self) -> set[str]:
        """Clients that can take part in a round: online and not done (a copy)."""
        return set(self.idle)

    # -- reporting -----------------------------------------------------------------------------

    def latency(self, now: float, recent: bool = False) -> dict[str, float | int]:
        """Count, p50, p99 and max fuse latency: all-time, or over the last ``latency_window`` seconds."""
        return self.fuse_latency.summary(now if recent else None)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The protocol counters as published in the status (bounded whatever the fleet size)."""
        m = self.metrics
        by_client = m.accepted_by_client
        listed = len(by_client) <= MAX_LISTED_CLIENTS and not m.accepted_uncounted
        online = list(self.online) if len(self.online) <= MAX_LISTED_ONLINE else []
        return {
            "version": self.version,
            "accepted": m.accepted,
            "accepted_by_client": dict(by_client) if listed else {},
            "clients_accepted": len(by_client),
            "accepted_uncounted": m.accepted_uncounted,
            "rejected": dict(self.rejects.counts),
            "superseded": m.superseded,
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
            "fuse_latency_recent": self.latency(now, recent=True),
            "clients_online": sorted(online),
            "clients_online_count": len(self.online),
            "clients_known": len(self.presence),
        }
