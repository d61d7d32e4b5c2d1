"""Staleness weighting policies for asynchronous aggregation.

Staleness ``s = v_now - base_version``: how many server versions passed since the knowledge a client
built on. The policies are the ones studied for asynchronous FL:

- ``constant``:    w(s) = 1
- ``polynomial``:  w(s) = (1 + s) ** -a              (FedAsync; a = 0.5 gives FedBuff's 1/sqrt(1+s))
- ``hinge``:       w(s) = 1 if s <= b else 1 / (a (s - b) + 1)     (FedAsync)

An update with ``s > max_staleness`` is dropped with reason ``stale``.

The weight enters the fusion exactly once: a contribution built on version ``b`` weighs
``base * w(v - b)`` at server version ``v`` (``w(s)`` at arrival, decaying afterwards). Base
weights never include ``w``; see :mod:`koala_async.core.fusion`.

**Damping** (FedAsync's ``alpha_t = alpha * w(s)``). The fused targets are normalised, so a weight
alone cannot make a stale arrival count less when it is the only contributor. What it moves is the
large model, and that is damped: the pacing grants a batch of ``n`` arrivals ``steps =
distill_steps * min(n, cap)`` distillation steps, and the batch distills for::

    damped_steps = max(1, round(steps * mean_i w(s_i)))      (s_i = v - b_i when the batch is fused)

i.e. each arrival buys ``distill_steps * w(s_i)`` steps at the same learning rate: a fresh arrival
the full ``distill_steps``, one 8 versions stale under ``(1+s)^-0.5`` a third of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

POLICIES = ("constant", "polynomial", "hinge")


@dataclass(frozen=True)
class StalenessPolicy:
    kind: str = "polynomial"
    a: float = 0.5
    b: int = 4
    max_staleness: int = 50

    def __post_init__(self) -> None:
        if self.kind not in POLICIES:
            raise ValueError(f"staleness policy {self.kind!r} is not one of {POLICIES}")
        if self.a < 0 or self.b < 0 or self.max_staleness < 0:
            raise ValueError("staleness parameters a, b and max_staleness must be >= 0")

    def weight(self, staleness: int) -> float:
        """The weight of an arrival ``staleness`` versions old (1.0 for a fresh one)."""
        if staleness < 0:
            raise ValueError(f"negative staleness {staleness}")
        if self.kind == "constant":
            return 1.0
        if self.kind == "polynomial":
            return float((1.0 + staleness) ** -self.a)
        if staleness <= self.b:
            return 1.0
        return 1.0 / (self.a * (staleness - self.b) + 1.0)

    def accepts(self, staleness: int) -> bool:
        return 0 <= staleness <= self.max_staleness


def damped_steps(steps: int, scales: Sequence[float]) -> int:
    """The distillation steps a batch earns once each arrival's share is damped by its ``w(s)``
    (``scales``): ``max(1, round(steps * mean(scales)))``; 0 when ``steps`` is 0 or nothing arrived."""
    if steps <= 0 or not scales:
        return 0
    return max(1, round(steps * sum(scales) / len(scales)))
