"""Per-tier trust: agreement with the large model, relative, bounded, and used by the fusion."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koala_async.core.fusion import Fusion, FusionConfig
from koala_async.core.staleness import StalenessPolicy
from koala_async.core.trust import OVERFLOW, TierTrust, TrustConfig, agreement

N, C = 40, 4


def one_hot_logits(labels: np.ndarray, scale: float = 5.0) -> np.ndarray:
    out = np.zeros((len(labels), C), dtype=np.float32)
    out[np.arange(len(labels)), labels] = scale
    return out


@pytest.fixture
def reference() -> np.ndarray:
    return one_hot_logits(np.arange(N) % C)


def noisy(reference: np.ndarray, wrong_share: float, seed: int = 0) -> np.ndarray:
    labels = reference.argmax(axis=1).copy()
    rng = np.random.default_rng(seed)
    flip = rng.choice(N, int(N * wrong_share), replace=False)
    labels[flip] = (labels[flip] + 1) % C
    return one_hot_logits(labels)


def test_agreement_on_subsets(reference: np.ndarray) -> None:
    ids = np.array([0, 5, 9])
    assert agreement(reference[ids], ids, reference) == 1.0
    assert agreement(noisy(reference, 0.5), None, reference) == pytest.approx(0.5)
    assert np.isnan(agreement(reference[:2], np.array([0, 1, 2]), reference))


def test_more_agreeing_tier_gets_more_trust(reference: np.ndarray) -> None:
    trust = TierTrust()
    for _ in range(5):
        trust.observe("medium", noisy(reference, 0.1), None, reference)
        trust.observe("tiny", noisy(reference, 0.4), None, reference)
    assert trust.trust("medium") == 1.0
    assert trust.trust("tiny") == pytest.approx(0.6 / 0.9, abs=0.01)
    assert set(trust.as_dict()) == {"medium", "tiny"}


def test_trust_is_bounded_below(reference: np.ndarray) -> None:
    trust = TierTrust(TrustConfig(floor=0.25))
    trust.observe("good", reference, None, reference)
    trust.observe("awful", noisy(reference, 1.0), None, reference)
    assert trust.trust("awful") == 0.25


def test_unknown_tier_and_no_knowledge_mean_full_trust(reference: np.ndarray) -> None:
    trust = TierTrust()
    assert trust.observe("tiny", noisy(reference, 0.9), None, None) == 1.0  # before any knowledge
    assert trust.trust("never-seen") == 1.0
    assert TierTrust(TrustConfig(enabled=False)).observe("t", noisy(reference, 0.9), None, reference) == 1.0


def test_ema_moves_gradually(reference: np.ndarray) -> None:
    trust = TierTrust(TrustConfig(beta=0.5))
    trust.observe("a", reference, None, reference)          # 1.0
    trust.observe("b", reference, None, reference)          # 1.0
    trust.observe("b", noisy(reference, 1.0), None, reference)  # 0.5 * 1 + 0.5 * 0
    assert trust.agreement_ema["b"] == pytest.approx(0.5)
    assert trust.trust("b") == pytest.approx(0.5)


def test_heterogeneous_fusion_follows_the_trusted_tier(reference: np.ndarray) -> None:
    """Two tiers disagree on every sample; the targets side with the one that agrees with the large
    model, although the other holds more data."""
    fusion = Fusion(N, C, FusionConfig(class_weighting=False, confidence_power=0.0, sample_weighting="none"),
                    StalenessPolicy(kind="constant"))
    trust = TierTrust()
    good, bad = noisy(reference, 0.0), noisy(reference, 1.0)
    for tier, sender, logits in (("medium", "laptop-0", good), ("tiny", "zero-0", bad), ("tiny", "zero-1", bad)):
        t = trust.observe(tier, logits, None, reference)
        fusion.add(sender, tier, 0, logits, None, n_samples=100, trust=t)
    targets, mask = fusion.targets(0)
    assert mask.all()
    # 1 x trust 1 vs 2 x trust 0.25: the medium tier wins on every sample.
    assert (targets.argmax(axis=1) == reference.argmax(axis=1)).all()
    untrusted = Fusion(N, C, fusion.config, fusion.policy)
    for sender, logits in (("laptop-0", good), ("zero-0", bad), ("zero-1", bad)):
        untrusted.add(sender, "any", 0, logits, None)
    assert (untrusted.targets(0)[0].argmax(axis=1) != reference.argmax(axis=1)).all()


def test_ten_thousand_tier_names_from_the_network_stay_bounded(reference: np.ndarray) -> None:
    """Tier strings are the sender's to choose: 10,000 distinct ones keep at most 64 estimates, the
    rest pooled, and the whole flood (with ``as_dict`` every 10 arrivals, as a status page would) stays
    fast: O(1) per arrival, O(64) per ``as_dict``."""
    trust = TierTrust()
    trust.observe("medium", noisy(reference, 0.0), None, reference)
    junk = [noisy(reference, 0.9, seed=s) for s in range(7)]
    started = time.perf_counter()
    for k in range(10_000):
        trust.observe(f"junk-{k}", junk[k % 7], None, reference)
        if k % 10 == 0:
            trust.as_dict()
    elapsed = time.perf_counter() - started
    assert len(trust.agreement_ema) <= 64 and OVERFLOW in trust.agreement_ema
    assert len(trust.as_dict()) <= 64
    assert trust.trust("medium") == 1.0  # tracked before the flood, keeps its estimate
    assert trust.trust("junk-9999") == trust.trust(OVERFLOW) < 0.5  # pooled, and judged on the pool
    assert trust.trust("junk-5") < 0.5  # tracked early, judged on its own
    assert elapsed < 2.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.floats(0.0, 1.0)), min_size=1, max_size=60),
       st.integers(1, 6))
def test_cached_best_matches_a_full_scan(observations, max_tiers) -> None:
    trust = TierTrust(TrustConfig(max_tiers=max_tiers, beta=0.5))
    for tier, wrong in observations:
        trust.observe(f"t{tier}", noisy(np.eye(C, dtype=np.float32)[np.arange(N) % C] * 5, wrong, tier), None,
                      np.eye(C, dtype=np.float32)[np.arange(N) % C] * 5)
        best = max(trust.agreement_ema.values())
        for name in trust.agreement_ema:
            expected = 1.0 if best <= 0 else min(1.0, max(0.25, trust.agreement_ema[name] / best))
            assert trust.trust(name) == pytest.approx(expected)
        assert len(trust.agreement_ema) <= max_tiers
