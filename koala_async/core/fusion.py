"""Fusing asynchronous client logits into per-proxy-sample soft targets.

The server keeps one *contribution* per client: its latest probabilities on the proxy samples it
covered (``softmax(logits / T)``, bounded by :func:`~koala_async.core.bounds.bound_probs`), the
knowledge version ``b_k`` it built on, and a *base weight* fixed at arrival, with no staleness in it::

    base_k = min(f(n_samples), cap) * trust          (cap: see koala_async.core.bounds.SizeWindow)

**Staleness enters exactly once.** At server version ``v`` a contribution weighs::

    weight_k(v) = base_k * w(v - b_k)

so at arrival (``v`` = the version it arrived at, staleness ``s``) it weighs ``base_k * w(s)``, and
as the server moves on it decays smoothly along the same curve ``w``. (Until this version the server
also multiplied ``w(s)`` into the weight it passed in: a fresh fusion counted ``w(s)**2``.) How far
one arrival moves the large model is damped by :meth:`Fusion.step_scale` ``= w(s)`` (FedAsync's
``alpha_t = alpha * w(s)``), which the server applies to its distillation steps or learning rate, so
a stale arrival moves the model less even when it is the only contributor.

Per sample and class, ``mean`` fuses ``sum_k weight_k(v) W_k[i,c] p_k[i,c] / sum_k weight_k(v) W_k[i,c]``
where ``W_k[i,c] = g_k[i] * h_k[c]``. ``h_k`` is the client's class shares from its label histogram
(uniform ``1/C`` when it sends none, or when ``class_weighting`` is off). ``g_k[i]`` is its confidence
factor on sample ``i``, from ``conf_k[i]``, the bounded top probability::

    relative (default):  g_k[i] = min((conf_k[i] / mean_j conf_k[j]) ** power, max_weight_ratio)
    absolute:            g_k[i] = conf_k[i] ** power          (power: confidence_power)

*Relative* confidence decides where a client's weight goes, not how much it has: a non-IID client
still teaches mostly the samples it is sure of, but a client claiming certainty everywhere gets
``g = 1`` everywhere, and no client gets more than ``max_weight_ratio`` times its share on any
sample. (*Absolute* lets a confident client outweigh diffuse honest ones several times over.)

The sums are kept incrementally (:mod:`koala_async.core.fusion_sums`): an arrival, a replacement or a
forget costs O(n_k C) for the ``n_k`` samples it covers, and targets cost O(buckets N C), independent
of the number of clients.

**Forgetting.** A contribution goes away when its sender sends a newer one (replaced), on
:meth:`Fusion.forget` (goodbye, last will), on :meth:`Fusion.evict_silent` (no arrival for too many
versions), and when it becomes older than ``policy.max_staleness``: :meth:`Fusion.expire`, which
:meth:`Fusion.targets` calls, drops every contribution with ``v - b_k > max_staleness`` (the same
cut-off admission applies to arrivals; knowledge that old is forgotten, not decayed further).
Memory is O(active clients' updates + buckets N C).

``median``, ``trimmed`` and ``filtered`` are full recomputations over the stored contributions:
O(K N C) per call for K clients; see :mod:`koala_async.core.fusion_robust`.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from koala_async.core.bounds import SAMPLE_WEIGHTING, SizeWindow, bound_probs, size_factor
from koala_async.core.fusion_robust import outliers, robust_targets
from koala_async.core.fusion_sums import BucketedSums, normalise
from koala_async.core.staleness import StalenessPolicy

__all__ = ["METHODS", "SAMPLE_WEIGHTING", "Contribution", "Fusion", "FusionConfig", "size_factor", "softmax"]

METHODS = ("mean", "median", "trimmed", "filtered")
CONFIDENCE = ("relative", "absolute")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float32) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class Contribution:
    sender: str
    tier: str
    base_version: int
    probs: np.ndarray  # (n, C) float32, bounded
    ids: np.ndarray  # (n,) int64 proxy indices, unique
    class_weights: np.ndarray | None  # (C,) share of each class in the client's data
    size_factor: float  # f(n_samples) as claimed (clipped to a known size)
    applied_size: float  # min(size_factor, the cap when it was last set)
    trust: float
    stamp: int  # server version at its arrival (for evict_silent)
    generation: int = 0  # bumped whenever its weight changes (for the cap heap)

    @property
    def base_weight(self) -> float:
        return self.applied_size * self.trust


@dataclass(frozen=True)
class FusionConfig:
    method: str = "mean"
    temperature: float = 3.0
    # "none": a client's claimed data size buys it nothing (chosen on validation, docs/fusion.md);
    # sqrt / linear are capped at max_weight_ratio times the recent median.
    sample_weighting: str = "none"
    # Weight each client's vote on a sample by its own (bounded) confidence there. With non-IID shards
    # a client is confident on the classes it has seen and diffuse elsewhere, so each sample is taught
    # mostly by the clients that know it; max_certainty keeps a claimed certainty from buying more.
    confidence_power: float = 1.0
    confidence: str = "relative"  # relative | absolute (see the module docstring)
    trim_fraction: float = 0.2
    agreement_floor: float = 0.25  # ``filtered``: least agreement with the consensus to be kept
    # With label histograms from clients, judge each class's probability by the clients that hold it.
    class_weighting: bool = True
    # one client's probability is at most 1/C + max_certainty (1 - 1/C) (koala_async.core.bounds)
    max_certainty: float = 0.4
    max_weight_ratio: float = 2.0  # size factor at most this times the recent median
    size_window: int = 64  # distinct recent senders the median is taken over

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"fusion method {self.method!r} is not one of {METHODS}")
        size_factor(1, self.sample_weighting)
        if self.confidence not in CONFIDENCE:
            raise ValueError(f"confidence {self.confidence!r} is not one of {CONFIDENCE}")
        if not 0 <= self.trim_fraction < 0.5:
            raise ValueError("trim_fraction must be in [0, 0.5)")
        if not 0 < self.max_certainty <= 1:
            raise ValueError(f"max_certainty {self.max_certainty} must be in (0, 1]")
        if not self.max_weight_ratio >= 1 or self.size_window < 1:
            raise ValueError("max_weight_ratio must be >= 1 and size_window >= 1")


class Fusion:
    """Latest contribution per client, kept as running sums and fused on demand into soft targets."""

    def __init__(self, n_proxy: int, num_classes: int, config: FusionConfig,
                 policy: StalenessPolicy) -> None:
        self.n_proxy = n_proxy
        self.num_classes = num_classes
        self.config = config
        self.policy = policy
        self.contributions: dict[str, Contribution] = {}  # in order of last arrival
        self.sizes = SizeWindow(config.size_window, config.max_weight_ratio)
        self._sums = BucketedSums(n_proxy, num_classes)
        self._heap: list[tuple[float, int, str]] = []  # (-applied_size, generation, sender)
        self._generation = 0
        self._clock = 0  # latest arrival stamp: keeps stamps non-decreasing

    def step_scale(self, staleness: int) -> float:
        """FedAsync damping ``w(s)``: the share of a full distillation step one arrival of staleness
        ``s`` earns (1 for a fresh one)."""
        return self.policy.weight(staleness)

    def add(self, sender: str, tier: str, base_version: int, logits: np.ndarray, ids: np.ndarray | None, *,
            n_samples: int = 1, trust: float = 1.0, label_counts: np.ndarray | None = None,
            known_size: int | None = None, version: int | None = None) -> float:
        """Record ``sender``'s newest logits (replacing its previous contribution).

        ``version`` is the server's version now (default ``base_version``); ``known_size`` a data size
        the server knows for this sender, which caps ``n_samples``. Returns the contribution's weight
        at arrival, ``base * w(version - base_version)``. O(n_k C + size_window + log K).
        """
        probs, ids = self._checked(logits, ids, label_counts)
        if not (math.isfinite(trust) and trust > 0):
            raise ValueError(f"trust {trust} must be finite and > 0")
        if known_size is not None:
            n_samples = min(n_samples, known_size)
        factor = size_factor(n_samples, self.config.sample_weighting)
        cap = self.sizes.observe(sender, factor)
        class_weights = None
        if label_counts is not None and self.config.class_weighting and label_counts.sum() > 0:
            class_weights = label_counts.astype(np.float64) / label_counts.sum()
        self.forget(sender)
        now = base_version if version is None else version
        self._clock = max(self._clock, now)
        contrib = Contribution(sender, tier, base_version, bound_probs(probs, self.config.max_certainty), ids,
                               class_weights, factor, min(factor, cap), float(trust), self._clock)
        self._insert(contrib)
        self._enforce_cap(cap)
        return contrib.base_weight * self.policy.weight(max(now - base_version, 0))

    def forget(self, sender: str) -> bool:
        """Remove ``sender``'s contribution (goodbye, last will); O(its size). False if it had none."""
        contrib = self.contributions.pop(sender, None)
        if contrib is None:
            return False
        self._sums.remove(sender, contrib.base_version, contrib.ids, *self._terms(contrib))
        return True

    def evict_silent(self, version: int, max_silent_versions: int) -> list[str]:
        """Forget every sender whose last arrival is more than ``max_silent_versions`` before
        ``version``; returns them, oldest first. O(evicted)."""
        evicted = []
        while self.contributions:
            sender, contrib = next(iter(self.contributions.items()))
            if version - contrib.stamp <= max_silent_versions:
                break
            self.forget(sender)
            evicted.append(sender)
        return evicted

    def expire(self, version: int) -> list[str]:
        """Forget the contributions older than ``max_staleness`` at ``version``; returns their senders.
        O(buckets + expired)."""
        expired: list[str] = []
        for base in self._sums.older_than(version - self.policy.max_staleness):
            for sender in sorted(self._sums.drop(base)):
                del self.contributions[sender]
                expired.append(sender)
        return expired

    def current_weights(self, version: int) -> dict[str, float]:
        """Each contribution's weight at ``version``: ``base * w(version - base_version)`` (O(K))."""
        return {c.sender: c.base_weight * self.policy.weight(max(version - c.base_version, 0))
                for c in self.contributions.values()}

    def targets(self, version: int) -> tuple[np.ndarray, np.ndarray]:
        """Soft targets ``(N, C)`` and a mask ``(N,)`` of samples that have any target, at ``version``
        (first expiring contributions older than ``max_staleness``)."""
        self.expire(version)
        method = self.config.method
        if method in ("median", "trimmed"):
            return robust_targets(list(self.contributions.values()), self.n_proxy, self.num_classes,
                                  method, self.config.trim_fraction)
        acc, total, count = self._sums.combine(version, self.policy.weight)
        if method == "filtered":
            for sender in self.outliers():
                contrib = self.contributions[sender]
                d = self.policy.weight(max(version - contrib.base_version, 0))
                weighted, weights = self._terms(contrib)
                acc[contrib.ids] -= d * weighted
                total[contrib.ids] -= d * weights
                count[contrib.ids] -= 1
        return normalise(acc, total, count > 0)

    def outliers(self) -> set[str]:
        """Senders ``filtered`` leaves out now (O(K N C); see :mod:`koala_async.core.fusion_robust`)."""
        return outliers(list(self.contributions.values()), self.n_proxy, self.num_classes,
                        self.config.trim_fraction, self.config.agreement_floor)

    def to_state(self) -> dict[str, np.ndarray | float | int | str]:
        """Plain numpy arrays, numbers and strings (safetensors + JSON); running sums are rebuilt."""
        state: dict[str, np.ndarray | float | int | str] = {
            "count": len(self.contributions), "clock": self._clock, **self.sizes.to_state()}
        for j, c in enumerate(self.contributions.values()):
            state.update({f"c/{j}/sender": c.sender, f"c/{j}/tier": c.tier, f"c/{j}/base_version": c.base_version,
                          f"c/{j}/probs": c.probs, f"c/{j}/ids": c.ids, f"c/{j}/size_factor": c.size_factor,
                          f"c/{j}/applied_size": c.applied_size, f"c/{j}/trust": c.trust,
                          f"c/{j}/stamp": c.stamp})
            if c.class_weights is not None:
                state[f"c/{j}/class_weights"] = c.class_weights
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, object], n_proxy: int, num_classes: int, config: FusionConfig,
                   policy: StalenessPolicy) -> Fusion:
        """A fusion holding what :meth:`to_state` wrote; a missing or misshapen entry raises
        ``ValueError`` naming its key."""
        fusion = cls(n_proxy, num_classes, config, policy)
        try:
            fusion.sizes.load_state(state)
            fusion._clock = int(state["clock"])  # type: ignore[call-overload]
            for j in range(int(state["count"])):  # type: ignore[call-overload]
                key = f"c/{j}/"
                probs = np.asarray(state[key + "probs"], dtype=np.float32)
                ids = np.asarray(state[key + "ids"], dtype=np.int64)
                if probs.ndim != 2 or probs.shape[1] != num_classes or len(ids) != len(probs):
                    raise ValueError(f"{key}probs has shape {probs.shape} for {len(ids)} ids, {num_classes} classes")
                if len(ids) and (ids.min() < 0 or ids.max() >= n_proxy):
                    raise ValueError(f"{key}ids outside [0, {n_proxy})")
                weights = state.get(key + "class_weights")
                fusion._insert(Contribution(
                    str(state[key + "sender"]), str(state[key + "tier"]),
                    int(state[key + "base_version"]), probs, ids,  # type: ignore[call-overload]
                    None if weights is None else np.asarray(weights, dtype=np.float64),
                    float(state[key + "size_factor"]), float(state[key + "applied_size"]),  # type: ignore[arg-type]
                    float(state[key + "trust"]), int(state[key + "stamp"])))  # type: ignore[arg-type, call-overload]
        except KeyError as exc:
            raise ValueError(f"fusion state lacks {exc.args[0]!r}") from None
        return fusion

    def _checked(self, logits: np.ndarray, ids: np.ndarray | None, label_counts: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Tempered probabilities and int64 ids, or ``ValueError`` naming what is wrong."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits shape {logits.shape} is not (n, {self.num_classes})")
        if not np.isfinite(logits).all():
            raise ValueError("logits hold non-finite values")
        ids = np.arange(len(logits), dtype=np.int64) if ids is None else np.asarray(ids).astype(np.int64)
        if ids.shape != (len(logits),):
            raise ValueError(f"{len(ids)} sample ids for {len(logits)} rows of logits")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.n_proxy or len(np.unique(ids)) != len(ids)):
            raise ValueError(f"sample ids must be unique and in [0, {self.n_proxy})")
        if label_counts is not None and (label_counts.shape != (self.num_classes,) or (label_counts < 0).any()):
            raise ValueError(f"label_counts must be {self.num_classes} non-negative counts")
        return softmax(logits, self.config.temperature), ids

    def _terms(self, contrib: Contribution) -> tuple[np.ndarray, np.ndarray]:
        """``(W * p, W)``, each (n_k, C) float64: what the contribution adds to its bucket's sums."""
        p = contrib.probs.astype(np.float64)
        w = np.full(len(p), contrib.base_weight)
        if self.config.confidence_power:
            factor = p.max(axis=1) ** self.config.confidence_power
            if self.config.confidence == "relative" and len(factor):
                factor = np.minimum(factor / factor.mean(), self.config.max_weight_ratio)
            w *= factor
        per_class = (contrib.class_weights if contrib.class_weights is not None
                     else np.full(self.num_classes, 1.0 / self.num_classes))
        weights = w[:, None] * per_class[None, :]
        return weights * p, weights

    def _insert(self, contrib: Contribution) -> None:
        self._generation += 1
        contrib.generation = self._generation
        self.contributions[contrib.sender] = contrib
        self._sums.add(contrib.sender, contrib.base_version, contrib.ids, *self._terms(contrib))
        heapq.heappush(self._heap, (-contrib.applied_size, contrib.generation, contrib.sender))
        if len(self._heap) > 2 * len(self.contributions) + 16:  # drop entries of replaced contributions
            self._heap = [(-c.applied_size, c.generation, c.sender) for c in self.contributions.values()]
            heapq.heapify(self._heap)

    def _enforce_cap(self, cap: float) -> None:
        """Lower every stored size factor above ``cap`` to it (an early arrival's huge claim is capped
        once honest arrivals set the median). Each lowering costs O(that contribution's size)."""
        while self._heap and -self._heap[0][0] > cap * (1 + 1e-12):
            _, generation, sender = heapq.heappop(self._heap)
            contrib = self.contributions.get(sender)
            if contrib is None or contrib.generation != generation:
                continue  # replaced or forgotten since
            # in place: the sender keeps its position in arrival order (evict_silent reads it)
            self._sums.remove(sender, contrib.base_version, contrib.ids, *self._terms(contrib))
            contrib.applied_size = cap
            self._generation += 1
            contrib.generation = self._generation
            self._sums.add(sender, contrib.base_version, contrib.ids, *self._terms(contrib))
            heapq.heappush(self._heap, (-cap, contrib.generation, sender))
