"""A status message's ``info``: a small, bounded map of scalars, short strings, small lists and maps.

Status messages are retained and every node keeps the latest one of each peer, so an unbounded
``info`` is a memory lever for anyone who can publish a status (a 2 MiB map per client id, ten
thousand client ids). :class:`InfoLimits` bounds it; the defaults and why:

- ``max_depth = 4``: ``info`` is level 1; a client's ``resources`` summary or the server's
  ``fuse_latency`` map is level 2; nothing we publish goes past 3.
- ``max_entries = 256`` per map or list: the server's status has about 25 keys, its reject
  counters about 30 reasons; per-client maps must be cut to their top entries by the sender
  (:func:`fit_info` does it mechanically).
- ``max_items = 1024`` values in all, ``max_str_len = 256`` characters a key or string value,
  ``max_bytes = 16 KiB`` in all (string and key lengths plus 8 per other value). A client's status
  is about 1 KiB; ten thousand clients then hold at most 160 MiB of peer info on the server.
- Values: ``None``, ``bool``, ``int``, ``float`` (NaN allowed: "no accuracy yet"), ``str``, lists and
  maps with string keys. No bytes, no ext types.

:func:`check_info` validates untrusted input (iteratively: it never recurses, and it never calls
``str``/``repr`` on what it walks); :func:`fit_info` cuts a trusted local map down to the limits so a
node never publishes a status its peers would refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from koala_async.errors import MessageError

_SCALARS = (type(None), bool, int, float)
TRUNCATED_KEY = "_truncated"  # fit_info: how many values it had to drop


@dataclass(frozen=True)
class InfoLimits:
    """Bounds on ``Status.info`` (see the module docstring for why these numbers)."""

    max_depth: int = 4
    max_entries: int = 256
    max_items: int = 1024
    max_str_len: int = 256
    max_bytes: int = 16 * 1024


def check_info(info: Any, limits: InfoLimits = InfoLimits()) -> dict[str, Any]:
    """Return ``info`` if it is within ``limits``; raise ``MessageError`` (``bad_info``, ``too_deep``
    or ``too_large``) if not."""
    if type(info) is not dict:
        raise MessageError("bad_info", "status.info is not a map")
    items = 0
    size = 0
    stack: list[tuple[Any, int]] = [(info, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limits.max_depth:
            raise MessageError("too_deep", f"status.info nests deeper than {limits.max_depth}")
        if len(node) > limits.max_entries:
            raise MessageError("too_large", f"status.info has a container of {len(node)} entries")
        if type(node) is dict:
            for key in node:
                if type(key) is not str:
                    raise MessageError("bad_info", "status.info has a non-string key")
                if len(key) > limits.max_str_len:
                    raise MessageError("too_large", f"status.info has a key of {len(key)} characters")
                size += len(key)
            values = node.values()
        else:
            values = node
        for value in values:
            items += 1
            kind = type(value)
            if kind is str:
                if len(value) > limits.max_str_len:
                    raise MessageError("too_large", f"status.info has a string of {len(value)} characters")
                size += len(value)
            elif kind is dict or kind is list:
                size += 8
                stack.append((value, depth + 1))
            elif kind in _SCALARS:
                size += 8
            else:
                raise MessageError("bad_info", f"status.info holds a {kind.__name__}")
        if items > limits.max_items or size > limits.max_bytes:
            raise MessageError("too_large", f"status.info holds over {limits.max_items} values "
                                            f"or {limits.max_bytes} bytes")
    return info


class _Budget:
    def __init__(self, limits: InfoLimits) -> None:
        self.items = limits.max_items - 1  # one kept for the truncation count
        self.bytes = limits.max_bytes - len(TRUNCATED_KEY) - 8
        self.dropped = 0

    def take(self, size: int) -> bool:
        if self.items < 1 or self.bytes < size:
            self.dropped += 1
            return False
        self.items -= 1
        self.bytes -= size
        return True


def _fit(value: Any, depth: int, limits: InfoLimits, budget: _Budget) -> tuple[bool, Any]:
    """``(kept, value)``: ``value`` (at nesting ``depth``) cut to the limits, or ``kept`` False when
    nothing of it fits. Recursion is bounded by ``max_depth``."""
    if isinstance(value, str):
        text = value[:limits.max_str_len]
        return budget.take(len(text)), text
    if isinstance(value, _SCALARS):
        return budget.take(8), value
    if hasattr(value, "item") and not hasattr(value, "__len__"):  # a NumPy scalar
        return _fit(value.item(), depth, limits, budget)
    if not isinstance(value, (dict, list, tuple)):
        return _fit(str(value), depth, limits, budget)  # anything else travels as its text
    if depth > limits.max_depth:
        budget.dropped += 1
        return False, None
    if not budget.take(8):
        return False, None
    pairs = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
    budget.dropped += max(len(pairs) - limits.max_entries, 0)
    if isinstance(value, dict):
        return True, _fit_map(pairs[:limits.max_entries], depth, limits, budget)
    out = []
    for _, item in pairs[:limits.max_entries]:
        kept, fitted = _fit(item, depth + 1, limits, budget)
        if kept:
            out.append(fitted)
    return True, out


def _fit_map(pairs: list[tuple[Any, Any]], depth: int, limits: InfoLimits,
             budget: _Budget) -> dict[str, Any]:
    """The entries of a map at ``depth`` that fit; keys become strings of at most ``max_str_len``."""
    out: dict[str, Any] = {}
    for key, item in pairs:
        name = str(key)[:limits.max_str_len]
        if budget.bytes < len(name):
            budget.dropped += 1
            continue
        budget.bytes -= len(name)
        kept, fitted = _fit(item, depth + 1, limits, budget)
        if kept:
            out[name] = fitted
        else:
            budget.bytes += len(name)
    return out


def fit_info(info: dict[str, Any], limits: InfoLimits = InfoLimits()) -> dict[str, Any]:
    """``info`` cut down to ``limits``: long strings shortened, containers past ``max_entries`` or past
    ``max_depth`` and values past the item or byte budget dropped, tuples made lists, NumPy scalars
    made Python ones, other objects made text. When anything was dropped, ``info["_truncated"]``
    says how many values. The result passes :func:`check_info`. ``info`` is trusted local data."""
    budget = _Budget(limits)
    keep = limits.max_entries - 1  # room for the truncation count
    out = _fit_map(list(info.items())[:keep], 1, limits, budget)
    budget.dropped += max(len(info) - keep, 0)
    if budget.dropped:
        out[TRUNCATED_KEY] = budget.dropped
    return out
