"""``[federation] mode`` and ``target_accuracy``: validated, overridable, passed to every node, reported."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from koala_async.config import load_into
from koala_async.errors import ConfigError
from koala_async.nodes.client import ClientConfig
from koala_async.nodes.server import ServerConfig
from koala_async.tools.cli import build_parser
from koala_async.tools.runner import time_to_target
from koala_async.tools.scenario import load_scenario

BASE = """\
[federation]
name = "t"
duration = 60
{federation}
[server]
large_model = "image-large"
{server}
[[clients]]
count = 3
prefix = "client"
[clients.config]
max_updates = 2
{client}
"""

SHIPPED = Path(__file__).resolve().parents[2] / "scenarios"


def write(tmp_path: Path, federation: str = "", server: str = "", client: str = "") -> Path:
    path = tmp_path / "s.toml"
    path.write_text(BASE.format(federation=federation, server=server, client=client))
    return path


@pytest.mark.parametrize("mode", ["async", "sync", "fedavg"])
def test_every_mode_reaches_the_server_and_every_client(tmp_path: Path, mode: str) -> None:
    scenario = load_scenario(write(tmp_path, f'mode = "{mode}"\n'))
    assert scenario.federation.mode == mode
    server = load_into(ServerConfig, scenario.server_config("mqtt://127.0.0.1:1"))
    assert server.mode == mode and server.large_model == "image-large"
    clients = [load_into(ClientConfig, c) for c in scenario.client_configs("mqtt://127.0.0.1:1")]
    assert [c.mode for c in clients] == [mode] * 3
    assert [c.shard for c in clients] == [0, 1, 2]  # the same split in every mode


def test_default_mode_is_async(tmp_path: Path) -> None:
    assert load_scenario(write(tmp_path)).federation.mode == "async"


def test_unknown_mode_names_the_choices_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_scenario(write(tmp_path, 'mode = "rounds"\n'))
    assert "'rounds'" in str(info.value) and "fedavg" in str(info.value)
    assert info.value.key == "federation.mode"
    assert info.value.line == 4


def test_mode_belongs_to_the_federation_not_a_node_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_scenario(write(tmp_path, client='mode = "sync"\n'))
    assert info.value.key == "clients[0].config.mode"
    with pytest.raises(ConfigError) as info:
        load_scenario(write(tmp_path, server='mode = "fedavg"\n'))
    assert info.value.key == "server.mode"


def test_mode_override_keeps_everything_else(tmp_path: Path) -> None:
    path = write(tmp_path, 'mode = "async"\n', client="slowdown = 4.0\n")
    base = load_scenario(path)
    over = load_scenario(path, mode="fedavg")
    assert over.federation.mode == "fedavg"
    assert replace(over, federation=replace(over.federation, mode="async")) == base
    with pytest.raises(ConfigError, match="--mode"):
        load_scenario(path, mode="gossip")
    args = build_parser().parse_args(["run", str(path), "--mode", "sync"])
    assert args.mode == "sync"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", str(path), "--mode", "gossip"])


def test_target_accuracy_is_checked(tmp_path: Path) -> None:
    assert load_scenario(write(tmp_path, "target_accuracy = 0.9\n")).federation.target_accuracy == 0.9
    with pytest.raises(ConfigError, match="target_accuracy"):
        load_scenario(write(tmp_path, "target_accuracy = 1.5\n"))


def test_time_to_target_is_the_first_report_at_or_above_it() -> None:
    timeline = [(0.0, 0, 0.1), (5.0, 1, 0.84), (9.5, 2, 0.86), (12.0, 3, 0.83), (20.0, 4, 0.9)]
    assert time_to_target(timeline, 0.85) == 9.5
    assert time_to_target(timeline, 0.95) is None
    assert time_to_target(timeline, None) is None


@pytest.mark.parametrize("name", ["bench/stragglers-churn.toml", "ci/bench-smoke.toml"])
@pytest.mark.parametrize("mode", ["async", "sync", "fedavg", "fedbuff"])
def test_shipped_bench_scenarios_load_in_every_mode(name: str, mode: str) -> None:
    scenario = load_scenario(SHIPPED / name, mode=mode)
    assert scenario.federation.target_accuracy is not None
    budgets = {c.get("max_updates", 0) for c in scenario.client_configs("mqtt://127.0.0.1:1")}
    if scenario.federation.until == "duration":
        # the same wall-clock time for every mode, clients training as often as their mode lets them
        assert budgets == {0}
    else:
        assert len(budgets) == 1 and budgets.pop() > 0  # one update budget for every client
