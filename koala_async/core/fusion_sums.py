"""Running weighted sums of contributions, bucketed by base version: the incremental weighted mean.

The fused target of proxy sample ``i``, class ``c``, at server version ``v`` is::

    target[i, c] = sum_k w(v - b_k) W_k[i, c] p_k[i, c]  /  sum_k w(v - b_k) W_k[i, c]

over the contributions ``k`` that cover ``i``, where ``b_k`` is the version contribution ``k`` built
on, ``w`` the staleness weight and ``W_k`` its per-sample, per-class weight (fixed at arrival). The
staleness factor depends on ``k`` only through ``b_k``, so the sums are kept per base version ``b``::

    A_b[i, c] = sum_{k: b_k = b} W_k[i, c] p_k[i, c]      T_b[i, c] = sum_{k: b_k = b} W_k[i, c]

and ``target = sum_b w(v - b) A_b / sum_b w(v - b) T_b``. Adding or removing one contribution touches
one bucket at its own rows: O(n_k C). Combining costs O(buckets N C), independent of the number of
clients; there are at most ``max_staleness + 1`` buckets, because the owner drops older ones.

Sums are float64. A bucket is deleted (not left holding rounding residue) when its last member
leaves; per-sample coverage counts are integers, so the mask is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# A class whose weight total is below this share of its row's total weight is treated as held by
# nobody: what remains there after subtracting a contribution is rounding residue (about 1e-16 of the
# removed weight), not a vote.
_RESIDUE = 1e-10


@dataclass
class Bucket:
    acc: np.ndarray  # (N, C) float64: sum of W * p
    total: np.ndarray  # (N, C) float64: sum of W
    count: np.ndarray  # (N,) int32: contributions covering each sample
    members: set[str] = field(default_factory=set)


class BucketedSums:
    """Per-base-version running sums over ``n`` proxy samples and ``c`` classes."""

    def __init__(self, n: int, c: int) -> None:
        self.n, self.c = n, c
        self.buckets: dict[int, Bucket] = {}

    def add(self, member: str, base_version: int, ids: np.ndarray, weighted: np.ndarray,
            weights: np.ndarray) -> None:
        """Add ``weighted = W * p`` and ``weights = W`` (both (n_k, C)) at rows ``ids`` (unique)."""
        bucket = self.buckets.get(base_version)
        if bucket is None:
            bucket = self.buckets[base_version] = Bucket(
                np.zeros((self.n, self.c)), np.zeros((self.n, self.c)), np.zeros(self.n, dtype=np.int32))
        bucket.acc[ids] += weighted
        bucket.total[ids] += weights
        bucket.count[ids] += 1
        bucket.members.add(member)

    def remove(self, member: str, base_version: int, ids: np.ndarray, weighted: np.ndarray,
               weights: np.ndarray) -> None:
        """Undo an :meth:`add` made with the same arguments."""
        bucket = self.buckets[base_version]
        bucket.members.discard(member)
        if not bucket.members:
            del self.buckets[base_version]
            return
        bucket.acc[ids] -= weighted
        bucket.total[ids] -= weights
        bucket.count[ids] -= 1

    def older_than(self, oldest_kept: int) -> list[int]:
        """Base versions of the buckets below ``oldest_kept``."""
        return [b for b in self.buckets if b < oldest_kept]

    def drop(self, base_version: int) -> set[str]:
        """Delete a whole bucket; returns its members."""
        return self.buckets.pop(base_version).members

    def combine(self, version: int, decay: Callable[[int], float]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(sum_b d_b A_b, sum_b d_b T_b, coverage)`` with ``d_b = decay(max(version - b, 0))``."""
        acc = np.zeros((self.n, self.c))
        total = np.zeros((self.n, self.c))
        count = np.zeros(self.n, dtype=np.int64)
        for base, bucket in self.buckets.items():
            d = decay(max(version - base, 0))
            acc += d * bucket.acc
            total += d * bucket.total
            count += bucket.count
        return acc, total, count


def normalise(acc: np.ndarray, total: np.ndarray, covered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``(N, C)`` float32 and mask ``(N,)`` from combined sums; uncovered rows are uniform."""
    n, c = acc.shape
    out = np.full((n, c), 1.0 / c)
    a, t = acc[covered], total[covered]
    held = t > _RESIDUE * t.sum(axis=1, keepdims=True)
    fused = np.divide(a, t, out=np.zeros_like(a), where=held)
    fused = np.clip(fused, 1e-8, None)
    out[covered] = fused / fused.sum(axis=1, keepdims=True)
    return out.astype(np.float32), covered
