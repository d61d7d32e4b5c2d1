"""Per-tier trust for heterogeneous fusion, estimated without labels.

In heterogeneous mode a tiny MLP and a medium CNN publish logits on the same proxy samples. Their
votes should not count the same, but the server has no labels it may use (the test split stays
untouched, the proxy set is unlabeled). So the server measures *agreement*: the share of covered
proxy samples on which a contribution's top class equals the large model's current top class. It
keeps an exponential moving average per tier, and turns it into a weight relative to the most
agreeing tier::

    a_t <- (1 - beta) a_t + beta * agreement(update, large model)
    trust_t = clip(a_t / max_u a_u, floor, 1)

Relative, because early on the large model is poor and every tier agrees little: what matters is
which tier agrees *more*. Bounded below by ``floor`` (0.25), because the large model learned from
the tiers themselves and a self-reinforcing loop must never silence a tier completely. A tier not
yet observed, and every arrival before the server has any knowledge, gets trust 1.

**Bounded by the server.** Tier names come from the network, so at most ``max_tiers`` (64) names are
tracked, first come first kept (never evicted: an evicted tier would come back unobserved, with full
trust). Every further name shares one pooled estimate under :data:`OVERFLOW`, observed and trusted
like a tier; deployments that know their tiers should list them (``accepted_tiers``) so admission
drops the rest. The best agreement is cached: ``trust`` is O(1); ``observe`` is O(1) except when it
lowers the tier that held the best, then O(max_tiers); ``as_dict`` is O(max_tiers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

OVERFLOW = "*other*"  # the pooled estimate of every tier name beyond ``max_tiers``


@dataclass(frozen=True)
class TrustConfig:
    enabled: bool = True
    beta: float = 0.3  # EMA weight of the newest observation
    floor: float = 0.25
    max_tiers: int = 64

    def __post_init__(self) -> None:
        if not 0 < self.beta <= 1:
            raise ValueError("trust beta must be in (0, 1]")
        if not 0 < self.floor <= 1:
            raise ValueError("trust floor must be in (0, 1]")
        if self.max_tiers < 1:
            raise ValueError("trust max_tiers must be >= 1")


def agreement(logits: np.ndarray, ids: np.ndarray | None, reference: np.ndarray) -> float:
    """Share of samples where ``logits`` (n, C) and ``reference[ids]`` have the same top class."""
    ref = reference if ids is None else reference[np.asarray(ids, dtype=np.int64)]
    if len(ref) == 0 or len(ref) != len(logits):
        return float("nan")
    return float((np.asarray(logits).argmax(axis=1) == np.asarray(ref).argmax(axis=1)).mean())


@dataclass
class TierTrust:
    config: TrustConfig = field(default_factory=TrustConfig)
    agreement_ema: dict[str, float] = field(default_factory=dict)
    observations: dict[str, int] = field(default_factory=dict)
    _best: float = field(default=-math.inf, repr=False)
    _best_tier: str | None = field(default=None, repr=False)

    def key(self, tier: str) -> str:
        """The name ``tier``'s estimate is kept under: itself while tracked or room is left, else
        :data:`OVERFLOW`."""
        if tier in self.agreement_ema or len(self.agreement_ema) < self.config.max_tiers - 1:
            return tier
        return OVERFLOW  # the last slot is kept for the pool, so the cap holds it too

    def observe(self, tier: str, logits: np.ndarray, ids: np.ndarray | None,
                reference: np.ndarray | None) -> float:
        """Fold one arrival into its tier's estimate; returns the tier's trust afterwards."""
        if self.config.enabled and reference is not None:
            a = agreement(logits, ids, reference)
            if not math.isnan(a):
                key = self.key(tier)
                old = self.agreement_ema.get(key)
                new = a if old is None else (1 - self.config.beta) * old + self.config.beta * a
                self.agreement_ema[key] = new
                self.observations[key] = self.observations.get(key, 0) + 1
                if new >= self._best:
                    self._best, self._best_tier = new, key
                elif key == self._best_tier:  # the leader fell: find the new one (O(max_tiers))
                    self._best_tier = max(self.agreement_ema, key=self.agreement_ema.__getitem__)
                    self._best = self.agreement_ema[self._best_tier]
        return self.trust(tier)

    def trust(self, tier: str) -> float:
        """``clip(a_t / max_u a_u, floor, 1)``; 1 for a tier never observed or when disabled. O(1)."""
        if not self.config.enabled:
            return 1.0
        ema = self.agreement_ema.get(self.key(tier))
        if ema is None or self._best <= 0:
            return 1.0
        return float(min(1.0, max(self.config.floor, ema / self._best)))

    def as_dict(self) -> dict[str, float]:
        """Trust of every tracked tier (and the pool), rounded, by name. O(max_tiers)."""
        return {t: round(self.trust(t), 4) for t in sorted(self.agreement_ema)}
