"""``koala run --set KEY=VALUE`` / ``--unset KEY``: change a scenario's TOML data before it is validated.

A key is a dotted path through tables, with integer steps into arrays of tables:
``server.lr``, ``server.finetune.train``, ``clients.0.config.max_updates``. A value is read as a TOML
value (``3e-4``, ``true``, ``["a", "b"]``, ``"text"``), and as a plain string when it is not one
(``--set server.large_weights=builtin:imagenet-mobilenet_v2``). ``--unset`` removes a key, so a
comparison can run the same file without, say, its pretrained weights. The result is validated like
the file itself, so a wrong key still fails before anything starts.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from typing import Any

from koala_async.errors import ConfigError


def parse_value(text: str) -> Any:
    """A TOML value, or the text itself when it is not one."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _walk(data: dict[str, Any], path: list[str], flag: str) -> tuple[Any, str | int]:
    """The container holding the last step of ``path`` (tables are created as needed), and that step."""
    node: Any = data
    for depth, step in enumerate(path[:-1]):
        where = ".".join(path[:depth + 1])
        if isinstance(node, list):
            if not step.isdigit() or int(step) >= len(node):
                raise ConfigError(f"{where}: index {step!r} is not in [0, {len(node)})", key=flag)
            node = node[int(step)]
        elif isinstance(node, dict):
            node = node.setdefault(step, {})
        if not isinstance(node, dict | list):
            raise ConfigError(f"{where} is a {type(node).__name__}, not a table", key=flag)
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"index {last!r} is not in [0, {len(node)})", key=flag)
        return node, int(last)
    return node, last


def apply_overrides(data: dict[str, Any], sets: Sequence[str] = (), unsets: Sequence[str] = ()) -> dict[str, Any]:
    """Apply ``--set KEY=VALUE`` and ``--unset KEY`` to ``data`` (changed in place and returned)."""
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected KEY=VALUE, got {item!r}", key="--set")
        container, last = _walk(data, key.strip().split("."), f"--set {key.strip()}")
        container[last] = parse_value(value.strip())
    for key in unsets:
        container, last = _walk(data, key.strip().split("."), f"--unset {key.strip()}")
        if isinstance(container, list) or last not in container:
            raise ConfigError(f"{key!r} is not set in the scenario", key="--unset")
        del container[last]
    return data
