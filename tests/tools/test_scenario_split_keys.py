"""A scenario that sets a split key per node (``[server]`` or ``[clients.config]``) instead of in
``[federation]`` is refused at validation, naming the key and its line: such a node derives another
split, and its clients would train on the server's test images (server seed 3 against clients at
``test_fraction`` 0.1 put 244 of 359 test images in client shards, silently)."""

from __future__ import annotations

from pathlib import Path

import pytest

from koala_async.core.splits import SPLIT_KEYS
from koala_async.errors import ConfigError
from koala_async.tools.scenario import load_scenario

FEDERATION = """\
[federation]
name = "t"
seed = 0
test_fraction = 0.2
duration = 60
"""
SERVER = """
[server]
distill_steps = 5
{line}
"""
CLIENTS = """
[[clients]]
count = 2
prefix = "a"
[clients.config]
max_updates = 1

[[clients]]
count = 2
prefix = "b"
[clients.config]
max_updates = 1
{line}
"""


def refused(tmp_path: Path, server: str = "", clients: str = "") -> ConfigError:
    text = FEDERATION + SERVER.format(line=server) + CLIENTS.format(line=clients)
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    return info.value


def line_of(tmp_path: Path, needle: str) -> int:
    return next(i for i, line in enumerate((tmp_path / "s.toml").read_text().splitlines(), 1) if line == needle)


def test_the_finding_server_seed_and_client_test_fraction_are_each_refused_with_key_and_line(
        tmp_path: Path) -> None:
    err = refused(tmp_path, server="seed = 3")
    assert err.key == "server.seed" and err.line == line_of(tmp_path, "seed = 3")
    assert "[federation]" in str(err)
    err = refused(tmp_path, clients="test_fraction = 0.1")
    assert err.key == "clients[1].config.test_fraction" and err.line == line_of(tmp_path, "test_fraction = 0.1")


@pytest.mark.parametrize("key", SPLIT_KEYS)
def test_every_split_key_is_the_federations(tmp_path: Path, key: str) -> None:
    value = '"mnist5k"' if key == "dataset" else ("1" if key == "seed" else "0.05")
    assert refused(tmp_path, server=f"{key} = {value}").key == f"server.{key}"
    assert refused(tmp_path, clients=f"{key} = {value}").key == f"clients[1].config.{key}"


def test_split_keys_in_federation_reach_every_node(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(FEDERATION.replace("seed = 0", "seed = 3\nvalidation_fraction = 0.05")
                    + SERVER.format(line="") + CLIENTS.format(line=""))
    scenario = load_scenario(path)
    server = scenario.server_config("mqtt://x:1")
    assert (server["seed"], server["validation_fraction"]) == (3, 0.05)
    assert all((c["seed"], c["validation_fraction"], c["test_fraction"]) == (3, 0.05, 0.2)
               for c in scenario.client_configs("mqtt://x:1"))
