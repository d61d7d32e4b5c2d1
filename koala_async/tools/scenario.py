"""Scenario files: a federation, its node groups, what goes wrong with it, and what must hold, in TOML.

The full schema is documented in ``docs/scenarios.md``. Every table is loaded with
:func:`koala_async.config.load_into`, so an unknown key, a wrong type or a bad value raises
:class:`~koala_async.errors.ConfigError` naming the file, the key path (``events[2].action``) and the
line, before any process starts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from koala_async.config import find_line, load_into, read_toml, rekey
from koala_async.core.modes import MODES
from koala_async.core.splits import SPLIT_KEYS
from koala_async.errors import ConfigError
from koala_async.nodes.config import split_fractions
from koala_async.tools.overrides import apply_overrides
from koala_async.tools.timeline import (
    ACTIONS,
    Event,
    absent_at_start,
    availability_events,
    broker_names,
    load_trace,
    resolve_target,
)

BROKER_KINDS = ("embedded", "mosquitto", "external")
ASSERTION_KINDS = ("final_accuracy", "max_staleness", "nothing_accepted_lost",
                   "reconnected_after_broker_restart", "learning_while_down", "all_contributed")


@dataclass(frozen=True)
class FederationSpec:
    name: str = "default"
    mode: Literal["async", "sync", "fedavg", "fedbuff"] = "async"  # core.modes.MODES
    dataset: str = "digits"
    seed: int = 0
    alpha: float = 0.5
    test_fraction: float = 0.2
    validation_fraction: float | None = None  # carved from test_fraction; unset: half of it (learning/data.py)
    proxy_fraction: float = 0.25
    duration: float = 240.0
    settle: float = 3.0
    # The accuracy a benchmark measures time-to-target against (the report's large_model.time_to_target).
    target_accuracy: float | None = None
    # "done": stop once the timeline has played, every running client made its updates and the server
    # settled (running out of ``duration`` is then a failure); "duration": always run ``duration``.
    until: str = "done"
    # Scheduling priority (nice, 0-19) of client processes. A scenario co-locates clients with the
    # server on one machine; real devices train on their own CPUs and never slow the server down.
    # A positive value gives the server first claim on the cores, as separate devices would.
    client_nice: int = 0
    # Pin co-located processes (os.sched_setaffinity): the server on a core of its own, broker and
    # clients on the others, so client training never slows the server, as on separate devices.
    pin_cores: bool = True
    # Every this many seconds the runner samples the server's latest held-out accuracy (the report's
    # large_model.grid): every mode is read on the same wall-clock cadence, however often it publishes.
    sample_every: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.client_nice <= 19:
            raise ValueError("client_nice must be in [0, 19]")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {list(MODES)}")
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise ValueError("target_accuracy must be in (0, 1]")
        if self.duration <= 0:
            raise ValueError("duration must be > 0")
        if self.sample_every <= 0:
            raise ValueError("sample_every must be > 0")
        if self.until not in ("done", "duration"):
            raise ValueError(f"until {self.until!r} is not one of ['done', 'duration']")
        object.__setattr__(self, "validation_fraction",
                           split_fractions(self.test_fraction, self.validation_fraction, self.proxy_fraction))


@dataclass(frozen=True)
class ClientGroup:
    count: int = 1
    prefix: str = "client"
    profile: str | None = None  # passed through to ClientConfig.profile (device profiles)
    start: bool = True  # false: the group starts only on a join event (or its availability trace)
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("count must be >= 1")


@dataclass(frozen=True)
class BrokerSpec:
    kind: str = "embedded"  # embedded amqtt in its own process | mosquitto on a free port | external
    url: str | None = None  # external: one URL, or several comma-separated (failover order)
    mosquitto: str = "mosquitto"  # the executable (PATH is searched, then /usr/sbin)
    # Independent brokers of ``kind``, each its own process on its own port ("broker", "broker-2", ...);
    # every node is given all their URLs, in that order, and fails over down the list.
    count: int = 1

    def __post_init__(self) -> None:
        if self.kind not in BROKER_KINDS:
            raise ValueError(f"broker kind {self.kind!r} is not one of {list(BROKER_KINDS)}")
        if self.kind == "external" and not self.url:
            raise ValueError("an external broker needs url")
        if not 1 <= self.count <= 8:
            raise ValueError(f"count must be 1 to 8 brokers, not {self.count}")
        if self.kind == "external" and self.count != 1:
            raise ValueError("an external broker takes its URLs in url (comma-separated), not count")

    @property
    def names(self) -> list[str]:
        return broker_names(self.count)


@dataclass(frozen=True)
class EventSpec:
    at: float
    action: str
    target: str
    duration: float = 0.0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action {self.action!r} is not one of {sorted(ACTIONS)}")
        if self.at < 0 or self.duration < 0:
            raise ValueError("at and duration must be >= 0")
        if self.action in ("straggle", "disconnect") and self.duration <= 0:
            raise ValueError(f"{self.action} needs a duration > 0 (seconds until it ends)")


@dataclass(frozen=True)
class AvailabilitySpec:
    """FedScale-style availability: per client, [start, end] intervals when it is online."""

    file: str | None = None  # .json {"client-0": [[0, 30], [45, 90]]} or .csv client,start,end
    clients: dict[str, list[list[float]]] = field(default_factory=dict)
    offline: str = "leave"  # how a client goes away at the end of an interval: leave | crash

    def __post_init__(self) -> None:
        if self.offline not in ("leave", "crash"):
            raise ValueError(f"offline {self.offline!r} is not one of ['leave', 'crash']")


@dataclass(frozen=True)
class AssertionSpec:
    kind: str
    name: str = ""
    min: float | None = None
    max: float | None = None
    target: str = "clients"  # which clients (for all_contributed, learning_while_down)
    window: list[float] = field(default_factory=list)  # [t0, t1] for learning_while_down

    def __post_init__(self) -> None:
        if self.kind not in ASSERTION_KINDS:
            raise ValueError(f"assertion kind {self.kind!r} is not one of {list(ASSERTION_KINDS)}")
        if self.kind == "final_accuracy" and self.min is None:
            raise ValueError("final_accuracy needs min")
        if self.kind == "max_staleness" and self.max is None:
            raise ValueError("max_staleness needs max")
        if self.window and (len(self.window) != 2 or self.window[0] >= self.window[1]):
            raise ValueError("window must be [start, end] with start < end")

    @property
    def label(self) -> str:
        return self.name or self.kind


@dataclass(frozen=True)
class Scenario:
    federation: FederationSpec = field(default_factory=FederationSpec)
    server: dict[str, Any] = field(default_factory=dict)
    clients: list[ClientGroup] = field(default_factory=list)
    broker: BrokerSpec = field(default_factory=BrokerSpec)
    events: list[EventSpec] = field(default_factory=list)
    availability: AvailabilitySpec | None = None
    assertions: list[AssertionSpec] = field(default_factory=list)
    source: str = "<scenario>"
    # Filled by load_scenario: the events to play (explicit ones and those from availability traces).
    timeline: tuple[Event, ...] = ()
    late: tuple[str, ...] = ()  # clients an availability trace keeps out at t=0

    def client_ids(self) -> list[str]:
        return [f"{g.prefix}-{i}" for g in self.clients for i in range(g.count)]

    def groups(self) -> dict[str, list[str]]:
        return {g.prefix: [f"{g.prefix}-{i}" for i in range(g.count)] for g in self.clients}

    def initially_started(self) -> list[str]:
        """Clients started at t=0: groups with ``start = true`` minus those a trace says join later."""
        return [f"{g.prefix}-{i}" for g in self.clients for i in range(g.count)
                if g.start and f"{g.prefix}-{i}" not in self.late]

    @property
    def num_clients(self) -> int:
        return sum(g.count for g in self.clients)

    def server_config(self, broker_url: str) -> dict[str, Any]:
        f = self.federation
        shared = {"broker": broker_url, "federation": f.name, "dataset": f.dataset, "seed": f.seed,
                  "test_fraction": f.test_fraction, "validation_fraction": f.validation_fraction,
                  "proxy_fraction": f.proxy_fraction}
        return {**shared, **self.server, "mode": f.mode}  # the federation's mode, in every node

    def client_configs(self, broker_url: str) -> list[dict[str, Any]]:
        f = self.federation
        out = []
        shard = 0
        for group in self.clients:
            extra = {"profile": group.profile} if group.profile is not None else {}
            for i in range(group.count):
                # host_load: every client of a scenario shares this host; its load is not theirs.
                out.append({"broker": broker_url, "federation": f.name, "dataset": f.dataset, "host_load": False,
                            "seed": f.seed, "alpha": f.alpha, "test_fraction": f.test_fraction,
                            "validation_fraction": f.validation_fraction,
                            "proxy_fraction": f.proxy_fraction, "num_shards": self.num_clients,
                            "shard": shard, "node_id": f"{group.prefix}-{i}", **extra, **group.config,
                            "mode": f.mode})
                shard += 1
        return out


def _refuse_split_overrides(key: str, table: dict[str, Any], source: str, text: str) -> None:
    """A node table that sets a key the split is derived from would derive another split than the
    federation's: its clients would train on the server's test images, silently. Refused."""
    for name in SPLIT_KEYS:
        if name in table or name.replace("_", "-") in table:
            raise ConfigError(f"{name} is the federation's: the split (test, validation, proxy, private) is "
                              f"derived from it on every node; set it in [federation], not per node",
                              source=source, key=f"{key}.{name}", line=table_line(text, key, name))


def table_line(text: str, table: str, name: str) -> int | None:
    """Line of key ``name`` in table ``server`` or ``clients[i].config`` (the i-th [[clients]]
    group's ``[clients.config]``, or an inline ``config = {...}``); else :func:`find_line`'s guess."""
    lines = text.splitlines()
    match = re.fullmatch(r"clients\[(\d+)\]\.config", table)
    start, end = 0, len(lines)
    if match:
        groups = [i for i, line in enumerate(lines) if re.match(r"\s*\[\[\s*clients\s*\]\]", line)]
        index = int(match.group(1))
        if index < len(groups):
            start = groups[index]
            end = groups[index + 1] if index + 1 < len(groups) else len(lines)
    header = r"\s*\[\s*server\s*\]" if table == "server" else r"\s*\[\s*clients\.config\s*\]"
    inside = False
    for number in range(start, end):
        line = lines[number]
        if re.match(r"\s*\[", line):
            inside = bool(re.match(header, line))
            continue
        inline = match is not None and re.match(r"\s*config\s*=\s*\{", line) and re.search(rf"\b{name}\s*=", line)
        if (inside and re.match(rf"\s*{name}\s*=", line)) or inline:
            return number + 1
    return find_line(text, f"{table}.{name}")


def _check_node_tables(scenario: Scenario, text: str) -> None:
    """Validate the free-form server and client tables against the node config classes now, so a
    typo, an unknown model name, a module that does not import or missing weights fail before any
    process starts (the server's checks run in its config; a client's in ``check_client``)."""
    from koala_async.learning.config_checks import check_client
    from koala_async.nodes.client import ClientConfig
    from koala_async.nodes.server import ServerConfig

    load_into(ServerConfig, scenario.server_config("mqtt://127.0.0.1:1"), source=scenario.source,
              text=text, prefix="server")
    configs = scenario.client_configs("mqtt://127.0.0.1:1")
    first = 0
    for gi, group in enumerate(scenario.clients):
        prefix = f"clients[{gi}].config"
        config = load_into(ClientConfig, configs[first], source=scenario.source, text=text, prefix=prefix)
        try:
            check_client(config)
        except ConfigError as exc:
            rekey(exc, prefix, scenario.source, text)
        first += group.count


def _build_timeline(scenario: Scenario, text: str) -> tuple[tuple[Event, ...], tuple[str, ...]]:
    source = scenario.source
    ids, groups = scenario.client_ids(), scenario.groups()
    events: list[Event] = []
    late: set[str] = set()
    for i, spec in enumerate(scenario.events):
        key = f"events[{i}]"
        try:
            targets = resolve_target(spec.target, ids, groups, scenario.broker.count)
        except ValueError as exc:
            raise ConfigError(str(exc), source=source, key=f"{key}.target",
                              line=find_line(text, f"{key}.target")) from None
        if spec.at > scenario.federation.duration:
            raise ConfigError(f"at {spec.at} is after the scenario's duration {scenario.federation.duration}",
                              source=source, key=f"{key}.at", line=find_line(text, f"{key}.at"))
        if spec.action == "disconnect" and any(t == "server" or t.startswith("broker") for t in targets):
            raise ConfigError("disconnect applies to clients only", source=source, key=f"{key}.target",
                              line=find_line(text, f"{key}.target"))
        events.extend(Event.expand(spec.at, spec.action, targets, spec.duration, origin=f"{key}"))
    if scenario.availability is not None:
        av = scenario.availability
        traces = dict(av.clients)
        if av.file:
            path = Path(av.file)
            if not path.is_absolute():
                path = Path(source).parent / path
            try:
                traces.update(load_trace(path))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"availability trace {path}: {exc}", source=source, key="availability.file",
                                  line=find_line(text, "availability.file")) from None
        unknown = sorted(set(traces) - set(ids))
        if unknown:
            raise ConfigError(f"availability names unknown clients {unknown}; expected ids among {ids}",
                              source=source, key="availability.clients", line=find_line(text, "availability"))
        try:
            events.extend(availability_events(traces, av.offline, scenario.federation.duration))
            late = absent_at_start(traces)
        except ValueError as exc:
            raise ConfigError(str(exc), source=source, key="availability",
                              line=find_line(text, "availability")) from None
    return tuple(sorted(events, key=lambda e: (e.at, e.order))), tuple(sorted(late))


def load_scenario(path: str | Path, *, broker: str | None = None, mode: str | None = None,
                  sets: Sequence[str] = (), unsets: Sequence[str] = ()) -> Scenario:
    """Load and validate a scenario file. ``broker`` ("embedded", "mosquitto" or an mqtt:// URL)
    overrides the file's [broker] table, ``mode`` its ``[federation] mode``; ``sets`` (``KEY=VALUE``)
    and ``unsets`` (``KEY``) change any key first (:mod:`koala_async.tools.overrides`)."""
    data, text = read_toml(path)
    apply_overrides(data, sets, unsets)
    source = str(path)
    scenario = load_into(Scenario, {**data, "source": source}, source=source, text=text)
    if "timeline" in data:
        raise ConfigError("unknown key 'timeline'; use [[events]]", source=source, key="timeline",
                          line=find_line(text, "timeline"))
    if not scenario.clients:
        raise ConfigError("a scenario needs at least one [[clients]] group", source=source, key="clients")
    for key, table in [("server", scenario.server)] + [(f"clients[{i}].config", g.config)
                                                       for i, g in enumerate(scenario.clients)]:
        if "mode" in table:
            raise ConfigError("the mode is the federation's: set [federation] mode (or koala run --mode)",
                              source=source, key=f"{key}.mode", line=find_line(text, f"{key}.mode"))
        _refuse_split_overrides(key, table, source, text)
    ids = scenario.client_ids()
    if len(set(ids)) != len(ids):
        raise ConfigError("client ids collide; give each group its own prefix", source=source, key="clients")
    for i, a in enumerate(scenario.assertions):
        try:
            resolve_target(a.target, ids, scenario.groups(), scenario.broker.count)
        except ValueError as exc:
            raise ConfigError(str(exc), source=source, key=f"assertions[{i}].target",
                              line=find_line(text, f"assertions[{i}].target")) from None
    _check_node_tables(scenario, text)
    if broker:
        try:
            spec = BrokerSpec(kind="external", url=broker) if "://" in broker else BrokerSpec(kind=broker)
        except ValueError as exc:
            raise ConfigError(f"--broker: {exc}") from None
        scenario = replace(scenario, broker=spec)
    if mode:
        if mode not in MODES:
            raise ConfigError(f"--mode: mode {mode!r} is not one of {list(MODES)}")
        scenario = replace(scenario, federation=replace(scenario.federation, mode=mode))  # type: ignore[arg-type]
    timeline, late = _build_timeline(scenario, text)
    return replace(scenario, timeline=timeline, late=late)
