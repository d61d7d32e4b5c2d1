"""An unknown config key gets "did you mean" only for a key that is actually close to it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from koala_async.config import load_into
from koala_async.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    max_staleness: int = 50


@dataclass(frozen=True)
class Settings:
    alpha: float = 1.0
    broker: str = "mqtt://127.0.0.1"
    distill_steps: int = 5
    staleness: Inner = field(default_factory=Inner)


def _message(data: dict) -> str:
    with pytest.raises(ConfigError) as err:
        load_into(Settings, data, source="fed.toml")
    return str(err.value)


@pytest.mark.parametrize("typo, meant", [("distil_steps", "distill_steps"), ("borker", "broker"),
                                         ("Alpha", "alpha"), ("distill-step", "distill_steps")])
def test_a_typo_is_matched_to_the_key_it_resembles(typo: str, meant: str) -> None:
    assert f"did you mean {meant!r}?" in _message({typo: 1})


def test_nothing_close_suggests_nothing() -> None:
    # It used to suggest the alphabetically first key: "did you mean 'alpha'?"
    message = _message({"not_a_real_key_xyz": 1})
    assert "unknown key 'not_a_real_key_xyz'" in message and "did you mean" not in message


def test_nested_tables_suggest_their_own_keys() -> None:
    message = _message({"staleness": {"max_stalness": 3}})
    assert "[staleness.max_stalness]" in message and "did you mean 'max_staleness'?" in message
