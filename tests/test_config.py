"""Typed TOML loading: errors name the key path, the expectation and the line."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from koala_async.config import find_line, load_into, read_toml
from koala_async.core.fusion import FusionConfig
from koala_async.core.staleness import StalenessPolicy
from koala_async.errors import ConfigError
from koala_async.nodes.client import ClientConfig, TrainSettings
from koala_async.nodes.server import ServerConfig

GOOD = """\
node_id = "srv"
broker = "mqtt://10.0.0.2:1883"
distill_steps = 5
lr = 1
accepted_tiers = ["image-tiny", "image-small"]
proxy_path = "proxy.npz"

[staleness]
kind = "hinge"
a = 2
b = 3

[fusion]
method = "trimmed"
"""


def load(cls, text: str, source: str = "fed.toml"):
    return load_into(cls, tomllib.loads(text), source=source, text=text)


def test_loads_a_nested_dataclass() -> None:
    cfg = load(ServerConfig, GOOD)
    assert cfg.node_id == "srv" and cfg.broker == "mqtt://10.0.0.2:1883" and cfg.distill_steps == 5
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)  # an integer is a fine number
    assert cfg.accepted_tiers == ("image-tiny", "image-small")  # lists become tuples where typed so
    assert cfg.staleness == StalenessPolicy("hinge", a=2.0, b=3)
    assert cfg.fusion == FusionConfig(method="trimmed")
    assert cfg.proxy_path == "proxy.npz" and cfg.test_path is None
    assert cfg.seed == 0  # defaults kept


def test_dashes_in_keys_map_to_underscores() -> None:
    cfg = load(ClientConfig, 'node-id = "c9"\nmax-updates = 4\n[train]\nkd-weight = 0.5\n')
    assert cfg.node_id == "c9" and cfg.max_updates == 4 and cfg.train == TrainSettings(kd_weight=0.5)


def test_unknown_key_names_the_key_path_and_line() -> None:
    text = GOOD.replace('b = 3', 'b = 3\nmax_stalenes = 9')
    with pytest.raises(ConfigError) as info:
        load(ServerConfig, text)
    err = info.value
    assert err.key == "staleness.max_stalenes"
    assert err.line == 12
    assert err.source == "fed.toml"
    assert "fed.toml:12" in str(err) and "staleness.max_stalenes" in str(err)
    assert "max_staleness" in str(err)  # the message lists what would have been right


def test_unknown_top_level_key() -> None:
    with pytest.raises(ConfigError) as info:
        load(ServerConfig, 'node_id = "s"\n\nbrokr = "mqtt://x"\n')
    assert info.value.key == "brokr" and info.value.line == 3


@pytest.mark.parametrize(("text", "key", "line", "expected"), [
    ('seed = "zero"\n', "seed", 1, "expected an integer"),
    ('node_id = "s"\nlr = "fast"\n', "lr", 2, "expected a number"),
    ('seed = true\n', "seed", 1, "expected an integer"),
    ('node_id = 3\n', "node_id", 1, "expected a string"),
    ('[staleness]\nkind = "hinge"\nmax_staleness = 1.5\n', "staleness.max_staleness", 3,
     "expected an integer"),
    ('staleness = 3\n', "staleness", 1, "expected a table"),
    ('accepted_tiers = "image-tiny"\n', "accepted_tiers", 1, "expected a list"),
    ('accepted_tiers = ["a", 2]\n', "accepted_tiers[1]", 1, "expected a string"),
    ('proxy_path = 7\n', "proxy_path", 1, "expected str"),
], ids=["int", "float", "bool_for_int", "str", "nested_int", "table", "list", "list_item", "optional"])
def test_wrong_type_names_the_expected_type(text: str, key: str, line: int, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(ServerConfig, text)
    assert info.value.key == key
    assert info.value.line == line
    assert expected in str(info.value)


def test_client_bool_field() -> None:
    with pytest.raises(ConfigError, match="expected true or false") as info:
        load(ClientConfig, 'send_label_counts = "yes"\n')
    assert info.value.key == "send_label_counts"


def test_invalid_value_from_post_init_names_the_table() -> None:
    text = 'node_id = "s"\n[staleness]\nkind = "exponential"\n'
    with pytest.raises(ConfigError, match="exponential") as info:
        load(ServerConfig, text)
    assert info.value.key == "staleness"
    assert info.value.line == 2
    with pytest.raises(ConfigError, match="node_id"):
        load(ServerConfig, 'node_id = "a/b"\n')


def test_read_toml_good_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(GOOD)
    data, text = read_toml(path)
    assert data["staleness"]["kind"] == "hinge" and text == GOOD


def test_read_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('node_id = "s"\nseed = 1\nlr = = 3\n')
    with pytest.raises(ConfigError) as info:
        read_toml(path)
    assert info.value.line == 3
    assert info.value.source == str(path)
    assert f"{path}:3" in str(info.value)


def test_read_toml_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_toml(tmp_path / "absent.toml")


def test_find_line() -> None:
    text = "[server]\nseed = 1\n\n[server.staleness]\nkind = 'x'\n"
    assert find_line(text, "server.seed") == 2
    assert find_line(text, "server.staleness") == 4
    assert find_line(text, "server.nothing") is None
    assert find_line(None, "seed") is None
