"""Typed loading of TOML tables into frozen dataclasses, with errors that name file, key and line.

``load_into(Cls, mapping, source=..., text=...)`` checks every key against the dataclass fields
(nested dataclasses, ``X | None``, lists/tuples, dicts, literals via ``__post_init__``) and raises
:class:`~koala_async.errors.ConfigError` naming the key path (``federation.staleness.kind``), what was
expected, and the line in the file where the key stands when it can be found.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from koala_async.errors import ConfigError

T = TypeVar("T")


def find_line(text: str | None, key_path: str) -> int | None:
    """Best-effort line number of the last component of ``key_path`` in TOML ``text``."""
    if not text:
        return None
    parts = [p for p in re.split(r"\.|\[\d+\]", key_path) if p]
    if not parts:
        return None
    leaf = re.escape(parts[-1])
    patterns = [rf"^\s*{leaf}\s*=", rf"^\s*\[+\s*[\w.\-]*\b{leaf}\s*\]+", rf"\b{leaf}\s*="]
    lines = text.splitlines()
    for pattern in patterns:
        for number, line in enumerate(lines, start=1):
            if re.search(pattern, line):
                return number
    return None


def _fail(message: str, key: str, source: str | None, text: str | None) -> typing.NoReturn:
    raise ConfigError(message, source=source, key=key or None, line=find_line(text, key) if key else None)


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, key: str, source: str | None, text: str | None) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key, source, text)
            except ConfigError as exc:
                errors.append(exc)
        _fail(f"expected {' or '.join(_describe(a) for a in args if a is not type(None))}, "
              f"got {value!r}", key, source, text)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            _fail(f"expected one of {list(typing.get_args(tp))}, got {value!r}", key, source, text)
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            _fail(f"expected a table, got {type(value).__name__}", key, source, text)
        return load_into(tp, value, source=source, text=text, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, list):
            _fail(f"expected a list, got {type(value).__name__}", key, source, text)
        args = typing.get_args(tp)
        item = args[0] if args else Any
        items = [_convert(item, v, f"{key}[{i}]", source, text) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            _fail(f"expected a table, got {type(value).__name__}", key, source, text)
        _, vt = typing.get_args(tp) or (str, Any)
        return {k: _convert(vt, v, f"{key}.{k}", source, text) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(f"expected a number, got {value!r}", key, source, text)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(f"expected an integer, got {value!r}", key, source, text)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            _fail(f"expected true or false, got {value!r}", key, source, text)
        return value
    if tp is str:
        if not isinstance(value, str):
            _fail(f"expected a string, got {value!r}", key, source, text)
        return value
    return value


def load_into(cls: type[T], data: dict[str, Any], *, source: str | None = None, text: str | None = None,
              prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values raise ``ConfigError``."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        name = raw_key.replace("-", "_")
        key = f"{prefix}.{raw_key}" if prefix else raw_key
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=1)  # nothing when nothing is close
            _fail(f"unknown key {raw_key!r}; expected one of {sorted(fields)}"
                  + (f" (did you mean {close[0]!r}?)" if close else ""), key, source, text)
        kwargs[name] = _convert(hints[name], value, key, source, text)
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and n not in kwargs]
    if missing:
        _fail(f"missing required key(s) {missing}", prefix, source, text)
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a check in __post_init__ that names its own key (a model name, a device)
        rekey(exc, prefix, source, text)
    except (ValueError, TypeError) as exc:
        _fail(str(exc), prefix, source, text)


def rekey(exc: ConfigError, prefix: str, source: str | None, text: str | None) -> typing.NoReturn:
    """Raise ``exc`` again with its key under ``prefix`` (``tier`` -> ``clients[0].config.tier``) and
    the file and line where that key stands."""
    key = ".".join(p for p in (prefix, exc.key or "") if p)
    raise ConfigError(exc.message, source=source or exc.source, key=key or None,
                      line=find_line(text, key) if key else exc.line) from exc


def read_toml(path: str | Path) -> tuple[dict[str, Any], str]:
    """Parse a TOML file, turning syntax errors into ``ConfigError`` with the line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise ConfigError(f"invalid TOML: {exc}", source=str(path),
                          line=int(match.group(1)) if match else None) from None
