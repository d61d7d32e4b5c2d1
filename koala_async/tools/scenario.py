"""Scenario files: a federation, its node groups, and (later) its churn and assertions, in TOML.

Schema (every key optional unless noted; unknown keys are errors naming file, key path and line)::

    [federation]
    name = "quickstart"        # topic prefix koala/<name>/
    mode = "async"             # async KOALA
    dataset = "digits"         # digits | npz:PATH | mnist:DIR | cifar10:DIR
    seed = 0
    alpha = 0.5                # Dirichlet label skew of private shards
    test_fraction = 0.2
    proxy_fraction = 0.25
    duration = 240             # hard cap in seconds
    settle = 3.0               # seconds of no new server version that count as settled

    [server]                   # any ServerConfig key (see nodes/server.toml)
    distill_steps = 20
    [server.staleness]
    kind = "polynomial"

    [[clients]]                # a group of identical clients; ids are <prefix>-<n>
    count = 8
    prefix = "client"
    [clients.config]           # any ClientConfig key (see nodes/client.toml)
    max_updates = 8

    [broker]
    kind = "embedded"          # embedded | external
    url = "mqtt://127.0.0.1:1883"   # for external
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from koala_async.config import load_into, read_toml
from koala_async.errors import ConfigError


@dataclass(frozen=True)
class FederationSpec:
    name: str = "default"
    mode: str = "async"
    dataset: str = "digits"
    seed: int = 0
    alpha: float = 0.5
    test_fraction: float = 0.2
    proxy_fraction: float = 0.25
    duration: float = 240.0
    settle: float = 3.0

    def __post_init__(self) -> None:
        if self.mode not in ("async",):
            raise ValueError(f"mode {self.mode!r} is not one of ['async']")
        if self.duration <= 0:
            raise ValueError("duration must be > 0")


@dataclass(frozen=True)
class ClientGroup:
    count: int = 1
    prefix: str = "client"
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("count must be >= 1")


@dataclass(frozen=True)
class BrokerSpec:
    kind: str = "embedded"
    url: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("embedded", "external"):
            raise ValueError(f"broker kind {self.kind!r} is not one of ['embedded', 'external']")
        if self.kind == "external" and not self.url:
            raise ValueError("an external broker needs url")


@dataclass(frozen=True)
class Scenario:
    federation: FederationSpec = field(default_factory=FederationSpec)
    server: dict[str, Any] = field(default_factory=dict)
    clients: list[ClientGroup] = field(default_factory=list)
    broker: BrokerSpec = field(default_factory=BrokerSpec)
    source: str = "<scenario>"

    def client_ids(self) -> list[str]:
        return [f"{g.prefix}-{i}" for g in self.clients for i in range(g.count)]

    @property
    def num_clients(self) -> int:
        return sum(g.count for g in self.clients)

    def server_config(self, broker_url: str) -> dict[str, Any]:
        f = self.federation
        shared = {"broker": broker_url, "federation": f.name, "dataset": f.dataset, "seed": f.seed,
                  "test_fraction": f.test_fraction, "proxy_fraction": f.proxy_fraction}
        return {**shared, **self.server}

    def client_configs(self, broker_url: str) -> list[dict[str, Any]]:
        f = self.federation
        out = []
        shard = 0
        for group in self.clients:
            for i in range(group.count):
                out.append({"broker": broker_url, "federation": f.name, "dataset": f.dataset,
                            "seed": f.seed, "alpha": f.alpha, "test_fraction": f.test_fraction,
                            "proxy_fraction": f.proxy_fraction, "num_shards": self.num_clients,
                            "shard": shard, "node_id": f"{group.prefix}-{i}", **group.config})
                shard += 1
        return out


def _check_node_tables(scenario: Scenario, text: str) -> None:
    """Validate the free-form server and client tables against the node config classes now, so a
    typo fails before any process starts."""
    from koala_async.nodes.client import ClientConfig
    from koala_async.nodes.server import ServerConfig

    load_into(ServerConfig, scenario.server_config("mqtt://127.0.0.1:1"), source=scenario.source,
              text=text, prefix="server")
    configs = scenario.client_configs("mqtt://127.0.0.1:1")
    first = 0
    for gi, group in enumerate(scenario.clients):
        load_into(ClientConfig, configs[first], source=scenario.source, text=text,
                  prefix=f"clients[{gi}].config")
        first += group.count


def load_scenario(path: str | Path) -> Scenario:
    data, text = read_toml(path)
    source = str(path)
    scenario = load_into(Scenario, {**data, "source": source}, source=source, text=text)
    if not scenario.clients:
        raise ConfigError("a scenario needs at least one [[clients]] group", source=source, key="clients")
    ids = scenario.client_ids()
    if len(set(ids)) != len(ids):
        raise ConfigError("client ids collide; give each group its own prefix", source=source, key="clients")
    _check_node_tables(scenario, text)
    return scenario
