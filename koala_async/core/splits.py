"""Which split of a dataset a federation uses, named so that every node can tell it derived the same.

A federation derives its data deterministically from ``(dataset, seed, fractions)``
(:func:`koala_async.learning.data.split`): a held-out labeled part on the server (``test_fraction``
of the dataset, of which ``validation_fraction`` is validation and the rest test), an unlabeled proxy
part (``proxy_fraction``) and a private pool the clients' shards are drawn from. A node that derives
it with other keys gets other index sets, and nothing tells: a client at another seed or
``test_fraction`` trains on images the server tests on (seed 3 against seed 0 at ``test_fraction``
0.1 puts 244 of digits' 359 test images in 8 clients' shards).

:class:`SplitSpec` names one derivation: its keys and a *fingerprint*, a hash of the keys and of the
resulting index sets. The server carries its spec in its knowledge; a client that derived its shard
from a dataset compares fingerprints (:func:`mismatch`) and refuses to train on a difference.
Pure: hashlib and numpy only.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# The keys a split is derived from; a scenario sets them once, in [federation].
SPLIT_KEYS = ("dataset", "seed", "test_fraction", "validation_fraction", "proxy_fraction")
PARTS = ("test", "validation", "proxy", "private")  # the index sets, in fingerprint order
MAX_NAME = 256  # longest dataset name carried in a message


@dataclass(frozen=True)
class SplitSpec:
    """A derivation of the federation's split: its keys and their fingerprint."""

    dataset: str
    seed: int
    test_fraction: float
    validation_fraction: float
    proxy_fraction: float
    fingerprint: str

    def keys(self) -> str:
        """``dataset 'digits', seed 0, test_fraction 0.2, ...`` for error messages."""
        return ", ".join(f"{k} {getattr(self, k)!r}" for k in SPLIT_KEYS)

    def to_map(self) -> dict[str, Any]:
        """Plain values for a message body (see :func:`from_map`)."""
        return {"dataset": self.dataset, "seed": self.seed, "test": self.test_fraction,
                "validation": self.validation_fraction, "proxy": self.proxy_fraction, "id": self.fingerprint}

    @classmethod
    def from_map(cls, raw: Any) -> SplitSpec:
        """The spec in a decoded message body; ``ValueError`` naming the field that is wrong."""
        if type(raw) is not dict:
            raise ValueError("split is not a map")
        dataset, seed, ident = raw.get("dataset"), raw.get("seed"), raw.get("id")
        if type(dataset) is not str or not 0 < len(dataset) <= MAX_NAME:
            raise ValueError("split.dataset")
        if type(seed) is not int or not 0 <= seed < 1 << 63:
            raise ValueError("split.seed")
        if type(ident) is not str or not 0 < len(ident) <= 64:
            raise ValueError("split.id")
        fractions: list[float] = []
        for key in ("test", "validation", "proxy"):
            value = raw.get(key)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) \
                    or not 0 <= value < 1:
                raise ValueError(f"split.{key}")
            fractions.append(float(value))
        return cls(dataset, seed, fractions[0], fractions[1], fractions[2], ident)


def fingerprint(dataset: str, seed: int, test_fraction: float, validation_fraction: float,
                proxy_fraction: float, parts: Mapping[str, np.ndarray]) -> str:
    """Hash of the keys and of the index sets ``parts`` (``PARTS`` -> indices into the dataset)."""
    h = hashlib.sha256()
    h.update(json.dumps([dataset, seed, test_fraction, validation_fraction, proxy_fraction]).encode())
    for name in PARTS:
        idx = np.ascontiguousarray(parts[name], dtype=np.int64)
        h.update(f"{name}:{len(idx)}:".encode())
        h.update(idx.tobytes())
    return h.hexdigest()[:16]


def mismatch(server: SplitSpec | None, client: SplitSpec | None) -> str:
    """Why a client's shard does not belong to the server's split ("" when it does, or when either
    side has no derived split to compare: explicit files)."""
    if server is None or client is None or server.fingerprint == client.fingerprint:
        return ""
    differ = [k for k in SPLIT_KEYS if getattr(server, k) != getattr(client, k)]
    what = ", ".join(f"{k} {getattr(client, k)!r} (server: {getattr(server, k)!r})" for k in differ)
    return (f"this client's shard was derived with {what or 'the same keys but other data'}: split "
            f"{client.fingerprint} is not the server's {server.fingerprint}")
