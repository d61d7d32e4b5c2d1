"""Which proxy samples the updates built on each knowledge version label: the server's schedule.

With a proxy set of 50,000 images, logits on all of it are 1 MB per update (float16, 10 classes) and
the server's own forward pass over it takes minutes on a CPU per version. So the server names a
subset of ``size`` samples per version (``[server] proxy_subset``): the knowledge of version ``v``
carries the large model's logits on exactly ``ids(v)`` and the ids themselves, clients distill on those
samples and send logits on them (``sample_ids``), and admission refuses an update built on ``v`` whose
ids are not all in ``ids(v)`` (``unscheduled_ids``).

The subsets walk a seeded permutation of the proxy set, ``size`` samples a version, wrapping at the
end: every sample is scheduled once every ``ceil(N / size)`` versions, so the fused targets cover
the whole proxy set over time, and no sample twice before all were once. The schedule is a pure
function of ``(n_proxy, size, seed, version)``: a server restarted from its checkpoint recomputes
the subsets of versions it published before. Clients never recompute it: they read the ids from the
knowledge message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from koala_async.core.arrays import ArrayLimits, unpack_array
from koala_async.errors import MessageError


@dataclass(frozen=True)
class ProxySchedule:
    """``size`` of ``n_proxy`` samples per version, from a permutation seeded by ``seed``."""

    n_proxy: int
    size: int
    seed: int = 0
    _order: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_proxy < 1 or not 1 <= self.size <= self.n_proxy:
            raise ValueError(f"a proxy subset of {self.size} needs 1 <= size <= n_proxy ({self.n_proxy})")
        order = np.random.default_rng([self.seed, 0x5C4ED]).permutation(self.n_proxy).astype(np.uint32)
        object.__setattr__(self, "_order", order)

    @property
    def period(self) -> int:
        """Versions it takes to schedule every proxy sample once."""
        return -(-self.n_proxy // self.size)

    def ids(self, version: int) -> np.ndarray:
        """The sorted uint32 ids of proxy samples scheduled at ``version`` (``size`` distinct ids)."""
        start = (version % self.period) * self.size
        picked = self._order[np.arange(start, start + self.size) % self.n_proxy]
        return np.sort(picked)

    def admits(self, version: int, ids: np.ndarray | None) -> bool:
        """Whether ``ids`` (an update's ``sample_ids``) are all scheduled at ``version``."""
        if ids is None:
            return False
        scheduled = self.ids(version)
        where = np.searchsorted(scheduled, ids)
        inside = where < len(scheduled)
        return bool(inside.all() and (scheduled[where[inside]] == ids[inside]).all())


def schedule_for(n_proxy: int, size: int, seed: int) -> ProxySchedule | None:
    """The schedule of ``[server] proxy_subset = size``; None (every update labels the whole proxy set)
    for 0 or for a subset at least as large as the proxy set."""
    return ProxySchedule(n_proxy, size, seed) if 0 < size < n_proxy else None


def unpack_ids(obj: Any, logits: np.ndarray | None, limits: ArrayLimits) -> np.ndarray:
    """A knowledge message's ``ids`` field: sorted distinct uint32, one per logits row (MessageError else)."""
    ids = unpack_array(obj, "ids", limits)
    if ids.dtype != np.uint32 or ids.ndim != 1 or (logits is not None and len(logits) != len(ids)):
        raise MessageError("shape_mismatch", "knowledge ids must be uint32, one per logits row")
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
        raise MessageError("bad_sample_ids", "knowledge ids must be sorted and distinct")
    return ids
