"""Fusing asynchronous client logits into per-proxy-sample soft targets.

The server keeps one *contribution* per client: its latest probabilities on the proxy samples it
covered, the knowledge version it built on, and a weight fixed at arrival::

    w_arrival = staleness_weight(s) * f(n_samples) * tier_trust(tier)

When targets are needed at server version ``v``, each contribution is weighted again by how old it has
become, ``staleness_weight(v - base_version)``, so knowledge from a client that left fades smoothly but
never vanishes at once. The target of proxy sample ``i`` is the weighted mean (or a robust statistic)
of the probabilities of the contributions that cover ``i``; uncovered samples get no target (mask).

Robust methods (``median``, ``trimmed``) trade a little accuracy for resistance to clients sending
poisoned logits: they ignore weights beyond inclusion and take a coordinate-wise statistic.
``filtered`` first finds the consensus class of every proxy sample (argmax of the coordinate-wise
median of all clients' probabilities), then scores each client by how often its own argmax agrees
with the consensus on the samples whose consensus class it says it holds (its label histogram; all
classes without one). Non-IID honest clients are unsure outside their own classes but agree inside
them; a client sending a wrong class mapping agrees about as often as chance. Clients below
``agreement_floor`` are dropped (at most ``trim_fraction`` of them, the worst first) and the rest are
fused with the weighted mean: with honest clients it is the mean, with a few liars the mean of the
others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from koala_async.core.staleness import StalenessPolicy

METHODS = ("mean", "median", "trimmed", "filtered")
SAMPLE_WEIGHTING = ("none", "sqrt", "linear")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float32) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def size_factor(n_samples: int, rule: str) -> float:
    if rule == "none":
        return 1.0
    if rule == "sqrt":
        return math.sqrt(max(n_samples, 1))
    if rule == "linear":
        return float(max(n_samples, 1))
    raise ValueError(f"sample weighting {rule!r} is not one of {SAMPLE_WEIGHTING}")


@dataclass
class Contribution:
    sender: str
    tier: str
    base_version: int
    arrival_weight: float
    probs: np.ndarray  # (n, C) float32
    ids: np.ndarray  # (n,) int64 proxy indices
    class_weights: np.ndarray | None = None  # (C,) share of each class in the client's data


@dataclass(frozen=True)
class FusionConfig:
    method: str = "mean"
    temperature: float = 3.0
    sample_weighting: str = "sqrt"
    # Weight each client's vote on a sample by its own confidence there (max probability). With
    # non-IID shards a client is confident on the classes it has seen and diffuse elsewhere, so this
    # lets each sample be taught mostly by the clients that know it.
    confidence_power: float = 1.0
    trim_fraction: float = 0.2
    agreement_floor: float = 0.25  # ``filtered``: least agreement with the consensus to be kept
    # With label histograms from clients, judge each class's probability by the clients that hold
    # that class: fused[i, c] = sum_k w_k h_kc p_k[i, c] / sum_k w_k h_kc (then renormalised).
    class_weighting: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"fusion method {self.method!r} is not one of {METHODS}")
        size_factor(1, self.sample_weighting)
        if not 0 <= self.trim_fraction < 0.5:
            raise ValueError("trim_fraction must be in [0, 0.5)")


class Fusion:
    """Latest contribution per client, fused on demand into soft targets."""

    def __init__(self, n_proxy: int, num_classes: int, config: FusionConfig,
                 policy: StalenessPolicy) -> None:
        self.n_proxy = n_proxy
        self.num_classes = num_classes
        self.config = config
        self.policy = policy
        self.contributions: dict[str, Contribution] = {}

    def arrival_weight(self, staleness: int, n_samples: int, trust: float = 1.0) -> float:
        return self.policy.weight(staleness) * size_factor(n_samples, self.config.sample_weighting) * trust

    def add(self, sender: str, tier: str, base_version: int, logits: np.ndarray,
            ids: np.ndarray | None, weight: float, label_counts: np.ndarray | None = None) -> None:
        """Record a client's newest logits (replacing its previous contribution)."""
        if ids is None:
            ids = np.arange(logits.shape[0], dtype=np.int64)
        class_weights = None
        if label_counts is not None and self.config.class_weighting and label_counts.sum() > 0:
            class_weights = label_counts.astype(np.float64) / label_counts.sum()
        self.contributions[sender] = Contribution(
            sender=sender, tier=tier, base_version=base_version, arrival_weight=weight,
            probs=softmax(logits, self.config.temperature), ids=ids.astype(np.int64),
            class_weights=class_weights)

    def current_weights(self, version: int) -> dict[str, float]:
        """Each contribution's weight now: arrival weight times the decay of its age."""
        return {c.sender: c.arrival_weight * self.policy.weight(max(version - c.base_version, 0))
                for c in self.contributions.values()}

    def targets(self, version: int) -> tuple[np.ndarray, np.ndarray]:
        """Soft targets ``(N, C)`` and a mask ``(N,)`` of samples that have any target."""
        n, c = self.n_proxy, self.num_classes
        if not self.contributions:
            return np.full((n, c), 1.0 / c, dtype=np.float32), np.zeros(n, dtype=bool)
        if self.config.method == "mean":
            return self._weighted_mean(version)
        if self.config.method == "filtered":
            return self._weighted_mean(version, exclude=self.outliers())
        return self._robust()

    def outliers(self) -> set[str]:
        """Senders that disagree with the consensus even on the classes they claim to hold."""
        contribs = list(self.contributions.values())
        limit = int(math.floor(len(contribs) * self.config.trim_fraction))
        if limit == 0:
            return set()
        stack = np.full((len(contribs), self.n_proxy, self.num_classes), np.nan, dtype=np.float32)
        for row, contrib in enumerate(contribs):
            stack[row, contrib.ids] = contrib.probs
        covered = ~np.isnan(stack[:, :, 0]).all(axis=0)
        consensus = np.full(self.n_proxy, -1, dtype=np.int64)
        consensus[covered] = np.nanmedian(stack[:, covered], axis=0).argmax(axis=1)
        scored = []
        for contrib in contribs:
            agreed = consensus[contrib.ids]
            known = (np.ones(self.num_classes, dtype=bool) if contrib.class_weights is None
                     else contrib.class_weights >= 0.05)
            judged = known[agreed] & (agreed >= 0)
            if judged.sum() == 0:
                judged = agreed >= 0
            agreement = float((contrib.probs.argmax(axis=1)[judged] == agreed[judged]).mean()) if judged.any() else 1.0
            scored.append((agreement, contrib.sender))
        return {sender for agreement, sender in sorted(scored)[:limit] if agreement < self.config.agreement_floor}

    def _weighted_mean(self, version: int, exclude: frozenset[str] | set[str] = frozenset()
                       ) -> tuple[np.ndarray, np.ndarray]:
        n, c = self.n_proxy, self.num_classes
        acc = np.zeros((n, c), dtype=np.float64)
        total = np.zeros((n, c), dtype=np.float64)
        weights = self.current_weights(version)
        uniform = np.full(c, 1.0 / c)
        for contrib in self.contributions.values():
            if contrib.sender in exclude:
                continue
            w = np.full(len(contrib.ids), weights[contrib.sender], dtype=np.float64)
            if self.config.confidence_power:
                w *= contrib.probs.max(axis=1) ** self.config.confidence_power
            per_class = contrib.class_weights if contrib.class_weights is not None else uniform
            wc = w[:, None] * per_class[None, :]  # (n_k, C)
            np.add.at(acc, contrib.ids, contrib.probs * wc)
            np.add.at(total, contrib.ids, wc)
        mask = total.sum(axis=1) > 0
        out = np.full_like(acc, 1.0 / c)
        fused = np.divide(acc[mask], total[mask], out=np.zeros_like(acc[mask]), where=total[mask] > 0)
        fused = np.clip(fused, 1e-8, None)
        out[mask] = fused / fused.sum(axis=1, keepdims=True)
        return out.astype(np.float32), mask

    def _robust(self) -> tuple[np.ndarray, np.ndarray]:
        n, c = self.n_proxy, self.num_classes
        stack = np.full((len(self.contributions), n, c), np.nan, dtype=np.float32)
        for row, contrib in enumerate(self.contributions.values()):
            stack[row, contrib.ids] = contrib.probs
        mask = ~np.isnan(stack[:, :, 0]).all(axis=0)
        out = np.full((n, c), 1.0 / c, dtype=np.float32)
        if not mask.any():
            return out, mask
        sub = stack[:, mask]
        if self.config.method == "median":
            fused = np.nanmedian(sub, axis=0)
        else:
            ordered = np.sort(sub, axis=0)  # NaNs sort last
            counts = (~np.isnan(sub[:, :, 0])).sum(axis=0)  # (m,)
            fused = np.empty(sub.shape[1:], dtype=np.float32)
            for j, k in enumerate(counts):
                cut = int(math.floor(k * self.config.trim_fraction))
                fused[j] = ordered[cut:k - cut, j].mean(axis=0)
        fused = np.clip(fused, 1e-6, None)
        out[mask] = fused / fused.sum(axis=1, keepdims=True)
        return out, mask

    def forget(self, sender: str) -> None:
        self.contributions.pop(sender, None)
