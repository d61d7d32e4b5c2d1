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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TrustConfig:
    enabled: bool = True
    beta: float = 0.3  # EMA weight of the newest observation
    floor: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.beta <= 1:
            raise ValueError("trust beta must be in (0, 1]")
        if not 0 < self.floor <= 1:
            raise ValueError("trust floor must be in (0, 1]")


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

    def observe(self, tier: str, logits: np.ndarray, ids: np.ndarray | None,
                reference: np.ndarray | None) -> float:
        """Fold one arrival into its tier's estimate; returns the tier's trust afterwards."""
        if self.config.enabled and reference is not None:
            a = agreement(logits, ids, reference)
            if not math.isnan(a):
                old = self.agreement_ema.get(tier)
                self.agreement_ema[tier] = a if old is None else (1 - self.config.beta) * old + self.config.beta * a
                self.observations[tier] = self.observations.get(tier, 0) + 1
        return self.trust(tier)

    def trust(self, tier: str) -> float:
        if not self.config.enabled or tier not in self.agreement_ema:
            return 1.0
        best = max(self.agreement_ema.values())
        if best <= 0:
            return 1.0
        return float(min(1.0, max(self.config.floor, self.agreement_ema[tier] / best)))

    def as_dict(self) -> dict[str, float]:
        return {t: round(self.trust(t), 4) for t in sorted(self.agreement_ema)}
