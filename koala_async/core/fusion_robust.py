"""Robust statistics over the stored contributions: ``median``, ``trimmed`` and ``filtered``'s outliers.

These are full recomputations, not running sums: a coordinate-wise median or trimmed mean has no
incremental form that stays exact. Each call stacks every stored contribution into a
``(K, N, C)`` float32 array, so it costs O(K N C) time and memory for K active clients (K = 100,
N = 5,000, C = 10 is 20 MB and tens of milliseconds); the default ``mean`` costs O(buckets N C).

- ``median`` / ``trimmed``: ignore weights beyond inclusion and take the coordinate-wise median or
  trimmed mean of the (bounded) probabilities of the clients covering each sample.
- ``filtered`` (:func:`outliers`): finds the consensus class of every proxy sample (argmax of the
  coordinate-wise median), then scores each client by how often its own argmax agrees with the
  consensus on the samples whose consensus class it says it holds (its label histogram; all classes
  without one). Non-IID honest clients are unsure outside their own classes but agree inside them; a
  client sending a wrong class mapping, or one class for everything, agrees about as often as chance.
  Clients below ``agreement_floor`` are dropped (at most ``trim_fraction`` of them, the worst first)
  and the others are fused with the weighted mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Covering(Protocol):
    """What these statistics read from a contribution."""

    sender: str
    probs: np.ndarray  # (n_k, C)
    ids: np.ndarray  # (n_k,)
    class_weights: np.ndarray | None  # (C,)


def _stack(contribs: Sequence[Covering], n: int, c: int) -> np.ndarray:
    stack = np.full((len(contribs), n, c), np.nan, dtype=np.float32)
    for row, contrib in enumerate(contribs):
        stack[row, contrib.ids] = contrib.probs
    return stack


def robust_targets(contribs: Sequence[Covering], n: int, c: int, method: str,
                   trim_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinate-wise ``median`` or ``trimmed`` mean: targets ``(N, C)`` and mask ``(N,)``."""
    out = np.full((n, c), 1.0 / c, dtype=np.float32)
    if not contribs:
        return out, np.zeros(n, dtype=bool)
    stack = _stack(contribs, n, c)
    mask = ~np.isnan(stack[:, :, 0]).all(axis=0)
    if not mask.any():
        return out, mask
    sub = stack[:, mask]
    if method == "median":
        fused = np.nanmedian(sub, axis=0)
    elif method == "trimmed":
        ordered = np.sort(sub, axis=0)  # NaNs sort last
        counts = (~np.isnan(sub[:, :, 0])).sum(axis=0)  # (m,)
        fused = np.empty(sub.shape[1:], dtype=np.float32)
        for j, k in enumerate(counts):
            cut = math.floor(k * trim_fraction)
            fused[j] = ordered[cut:k - cut, j].mean(axis=0)
    else:
        raise ValueError(f"no robust statistic named {method!r}")
    fused = np.clip(fused, 1e-6, None)
    out[mask] = fused / fused.sum(axis=1, keepdims=True)
    return out, mask


def outliers(contribs: Sequence[Covering], n: int, c: int, trim_fraction: float,
             agreement_floor: float) -> set[str]:
    """Senders that disagree with the consensus even on the classes they claim to hold."""
    limit = math.floor(len(contribs) * trim_fraction)
    if limit == 0:
        return set()
    stack = _stack(contribs, n, c)
    covered = ~np.isnan(stack[:, :, 0]).all(axis=0)
    consensus = np.full(n, -1, dtype=np.int64)
    consensus[covered] = np.nanmedian(stack[:, covered], axis=0).argmax(axis=1)
    scored = []
    for contrib in contribs:
        agreed = consensus[contrib.ids]
        known = (np.ones(c, dtype=bool) if contrib.class_weights is None
                 else contrib.class_weights >= 0.05)
        judged = known[agreed] & (agreed >= 0)
        if judged.sum() == 0:
            judged = agreed >= 0
        mine = contrib.probs.argmax(axis=1)
        agreement = float((mine[judged] == agreed[judged]).mean()) if judged.any() else 1.0
        scored.append((agreement, contrib.sender))
    return {sender for agreement, sender in sorted(scored)[:limit] if agreement < agreement_floor}
