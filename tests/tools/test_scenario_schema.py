"""A scenario with a wrong key, type or value fails before anything starts, naming file, key and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from koala_async.errors import ConfigError
from koala_async.tools.scenario import load_scenario

BASE = """\
[federation]
name = "t"
duration = 60

[[clients]]
count = 3
prefix = "client"
[clients.config]
max_updates = 2
"""


def write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(BASE + extra)
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    return info.value


def test_valid_scenario_expands_share_targets(tmp_path: Path) -> None:
    path = write(tmp_path, '\n[[events]]\nat = 5\naction = "crash"\ntarget = "third of clients"\n'
                           '\n[[events]]\nat = 9\naction = "straggle"\ntarget = "client-2"\nduration = 3\n')
    scenario = load_scenario(path)
    assert [(e.at, e.action, e.target) for e in scenario.timeline] == [
        (5.0, "kill", "client-0"), (9.0, "pause", "client-2"), (12.0, "resume", "client-2")]


def test_typo_in_event_key_names_path_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '\n[[events]]\nat = 5\nacton = "crash"\ntarget = "client-0"\n')
    err = error_of(path)
    assert err.key == "events[0].acton"
    assert err.line == 13
    assert "unknown key 'acton'" in str(err) and str(path) in str(err)


def test_wrong_type_names_expected_type(tmp_path: Path) -> None:
    path = write(tmp_path, '\n[[events]]\nat = "soon"\naction = "crash"\ntarget = "client-0"\n')
    err = error_of(path)
    assert err.key == "events[0].at" and "expected a number" in str(err)


def test_unknown_action_lists_the_choices(tmp_path: Path) -> None:
    path = write(tmp_path, '\n[[events]]\nat = 5\naction = "explode"\ntarget = "client-0"\n')
    err = error_of(path)
    assert err.key == "events[0]" and "explode" in str(err) and "crash" in str(err)


def test_unknown_target_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '\n[[events]]\nat = 5\naction = "crash"\ntarget = "client-9"\n')
    err = error_of(path)
    assert err.key == "events[0].target" and err.line == 14


def test_straggle_needs_duration(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, '\n[[events]]\nat = 5\naction = "straggle"\ntarget = "client-0"\n'))
    assert "duration" in str(err)


def test_bad_assertion_kind_and_missing_threshold(tmp_path: Path) -> None:
    assert "assertion kind" in str(error_of(write(tmp_path, '\n[[assertions]]\nkind = "vibes"\n')))
    err = error_of(write(tmp_path, '\n[[assertions]]\nkind = "final_accuracy"\n'))
    assert err.key == "assertions[0]" and "needs min" in str(err)


def test_typo_in_client_config_is_caught(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, "max_updatez = 3\n"))
    assert err.key == "clients[0].config.max_updatez" and err.line == 10


def test_availability_trace_unknown_client(tmp_path: Path) -> None:
    (tmp_path / "trace.csv").write_text("client,start,end\nclient-0,0,10\nghost,5,20\n")
    err = error_of(write(tmp_path, '\n[availability]\nfile = "trace.csv"\n'))
    assert err.key == "availability.clients" and "ghost" in str(err)


def test_availability_csv_becomes_events(tmp_path: Path) -> None:
    (tmp_path / "trace.csv").write_text("client,start,end\nclient-0,0,10\nclient-0,20,100\nclient-1,5,100\n")
    scenario = load_scenario(write(tmp_path, '\n[availability]\nfile = "trace.csv"\noffline = "crash"\n'))
    assert [(e.at, e.action, e.target) for e in scenario.timeline] == [
        (5.0, "start", "client-1"), (10.0, "kill", "client-0"), (20.0, "start", "client-0")]
    assert scenario.initially_started() == ["client-0", "client-2"]


def test_cli_typo_exits_2_before_starting_anything(tmp_path: Path) -> None:
    path = write(tmp_path, '\n[[events]]\nat = 5\naction = "crash"\ntargett = "client-0"\n')
    workdir = tmp_path / "work"
    done = subprocess.run([sys.executable, "-m", "koala_async", "run", str(path), "--quiet",
                           "--workdir", str(workdir)], check=False, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "events[0].targett" in done.stderr and ":14" in done.stderr
    assert not workdir.exists()  # no broker, no node: nothing was started


def test_several_brokers_each_a_target_and_every_node_given_every_url(tmp_path: Path) -> None:
    path = write(tmp_path, '\n[broker]\nkind = "mosquitto"\ncount = 2\n'
                           '\n[[events]]\nat = 5\naction = "crash"\ntarget = "broker-2"\n')
    scenario = load_scenario(path)
    assert scenario.broker.names == ["broker", "broker-2"]
    assert [(e.action, e.target) for e in scenario.timeline] == [("kill", "broker-2")]
    assert scenario.client_configs("mqtt://a:1,mqtt://b:2")[0]["broker"] == "mqtt://a:1,mqtt://b:2"
    shipped = load_scenario(Path(__file__).parents[2] / "scenarios" / "broker-failover.toml")
    assert shipped.broker.count == 2 and shipped.timeline[0].target == "broker"


def test_a_broker_the_run_does_not_have_is_refused_naming_the_key(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, '\n[broker]\ncount = 2\n\n[[events]]\nat = 5\naction = "crash"\n'
                                   'target = "broker-3"\n'))
    assert err.key == "events[0].target" and "2 broker(s)" in str(err)
    err = error_of(write(tmp_path, '\n[broker]\nkind = "external"\nurl = "mqtt://x:1"\ncount = 2\n'))
    assert "comma-separated" in str(err)
