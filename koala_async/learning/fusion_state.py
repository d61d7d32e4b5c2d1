"""The fusion's contributions in a checkpoint: a few stacked arrays, not three arrays per client.

A checkpoint turns every array into a named tensor (``koala_async.io.checkpoint``); a thousand
contributions saved one by one were three thousand tensors, and flattening and saving them took about
a second a version (2-core dev machine). Packed, they are five arrays whatever the number of clients:

- ``probs`` (sum of n_k, C) float32 and ``ids`` (sum of n_k,) int64: every contribution's rows, one
  after another; ``offsets`` (K + 1,) int64 says where each starts;
- ``class_weights`` (K, C) float64, a row of NaN for a contribution without one;
- ``senders``, ``tiers``, ``base_versions``, ``weights``: plain lists, one entry per contribution,
  in the fusion's order (oldest first).

:func:`unpack_contributions` also reads the older form, a list of one map per contribution.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from koala_async.core.fusion import Contribution


def pack_contributions(contributions: list[Contribution], num_classes: int) -> dict[str, Any]:
    """The checkpoint form of ``contributions`` (see the module docstring)."""
    lengths = [len(c.ids) for c in contributions]
    offsets = np.zeros(len(contributions) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    empty_probs = np.zeros((0, num_classes), dtype=np.float32)
    class_weights = np.full((len(contributions), num_classes), np.nan)
    for row, c in enumerate(contributions):
        if c.class_weights is not None:
            class_weights[row] = c.class_weights
    return {
        "packed": 1,
        "senders": [c.sender for c in contributions], "tiers": [c.tier for c in contributions],
        "base_versions": [int(c.base_version) for c in contributions],
        "weights": [float(c.arrival_weight) for c in contributions],
        "offsets": offsets,
        "probs": np.concatenate([c.probs for c in contributions]).astype(np.float32, copy=False)
        if contributions else empty_probs,
        "ids": np.concatenate([c.ids for c in contributions]).astype(np.int64, copy=False)
        if contributions else np.zeros(0, dtype=np.int64),
        "class_weights": class_weights,
    }


def unpack_contributions(state: Any) -> list[Contribution]:
    """The contributions of :func:`pack_contributions` output, or of the older list of maps, oldest first."""
    if not isinstance(state, dict):
        return [Contribution(**{**item, "probs": np.asarray(item["probs"], dtype=np.float32),
                                "ids": np.asarray(item["ids"], dtype=np.int64)}) for item in state]
    offsets = np.asarray(state["offsets"], dtype=np.int64)
    probs = np.asarray(state["probs"], dtype=np.float32)
    ids = np.asarray(state["ids"], dtype=np.int64)
    class_weights = np.asarray(state["class_weights"], dtype=np.float64)
    out = []
    for k, sender in enumerate(state["senders"]):
        lo, hi = int(offsets[k]), int(offsets[k + 1])
        weights = class_weights[k]
        out.append(Contribution(sender=sender, tier=state["tiers"][k], base_version=int(state["base_versions"][k]),
                                arrival_weight=float(state["weights"][k]), probs=probs[lo:hi].copy(),
                                ids=ids[lo:hi].copy(), class_weights=None if np.isnan(weights).any() else weights.copy()))
    return out
