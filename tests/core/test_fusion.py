"""Fusing client logits into soft targets: weighted mean, class weighting, coverage, decay, robustness."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from koala_async.core.fusion import Fusion, FusionConfig, size_factor, softmax
from koala_async.core.staleness import StalenessPolicy

# temperature 1, no confidence weighting, no class weighting: targets are plain weighted means of
# softmax(logits), so probabilities p can be passed in exactly as logits log(p).
EXACT = FusionConfig(temperature=1.0, confidence_power=0.0, class_weighting=False, sample_weighting="none",
                     max_certainty=1.0)
CONSTANT = StalenessPolicy("constant")


def logits_of(p) -> np.ndarray:
    return np.log(np.asarray(p, dtype=np.float64)).astype(np.float32)


def test_softmax_rows_sum_to_one_and_temperature_flattens() -> None:
    z = np.array([[1.0, 2.0, 3.0]])
    assert softmax(z).sum() == pytest.approx(1.0)
    assert softmax(z, 3.0).max() < softmax(z, 1.0).max()


def test_no_contributions_gives_uniform_and_empty_mask() -> None:
    targets, mask = Fusion(4, 5, EXACT, CONSTANT).targets(0)
    np.testing.assert_allclose(targets, 0.2)
    assert not mask.any()


def test_weighted_mean_of_two_clients_matches_hand_computation() -> None:
    p_a = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    p_b = np.array([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    fusion = Fusion(2, 3, EXACT, CONSTANT)
    fusion.add("a", "t", 0, logits_of(p_a), None, trust=1.0)
    fusion.add("b", "t", 0, logits_of(p_b), None, trust=3.0)
    targets, mask = fusion.targets(0)
    assert mask.all()
    np.testing.assert_allclose(targets, (1 * p_a + 3 * p_b) / 4, atol=1e-6)
    # row 0: a says class 0, b (weighted 3x) says class 1 and wins
    assert targets[0].argmax() == 1


def test_size_factor_rules() -> None:
    assert size_factor(0, "sqrt") == 1.0 and size_factor(9, "linear") == 9.0 and size_factor(9, "none") == 1.0
    with pytest.raises(ValueError):
        size_factor(4, "cubic")


def test_class_weighting_keeps_a_non_holder_from_diluting_a_class() -> None:
    # one proxy sample of class 0. Client a holds every class, b holds no class 0 and says little on it.
    p_a = np.array([[0.6, 0.1, 0.1, 0.1, 0.1]])
    p_b = np.array([[0.02, 0.245, 0.245, 0.245, 0.245]])
    h_a = np.array([20, 20, 20, 20, 20])
    h_b = np.array([0, 25, 25, 25, 25])

    def fused(class_weighting: bool) -> np.ndarray:
        cfg = FusionConfig(temperature=1.0, confidence_power=0.0, class_weighting=class_weighting,
                           sample_weighting="none", max_certainty=1.0)
        fusion = Fusion(1, 5, cfg, CONSTANT)
        fusion.add("a", "t", 0, logits_of(p_a), None, label_counts=h_a)
        fusion.add("b", "t", 0, logits_of(p_b), None, label_counts=h_b)
        return fusion.targets(0)[0][0]

    on, off = fused(True), fused(False)
    # class 0 is judged by a alone; the other classes by both, in proportion to their class shares
    share_a, share_b = h_a / h_a.sum(), h_b / h_b.sum()
    raw = (share_a * p_a[0] + share_b * p_b[0]) / (share_a + share_b)
    np.testing.assert_allclose(on, raw / raw.sum(), atol=1e-5)
    assert raw[0] == pytest.approx(p_a[0, 0])
    # without class weighting b drags class 0 down to the plain mean
    np.testing.assert_allclose(off, (p_a[0] + p_b[0]) / 2, atol=1e-5)
    assert on[0] > off[0] + 0.1
    assert on.argmax() == 0


def test_class_weighting_on_a_class_nobody_holds_stays_tiny() -> None:
    cfg = FusionConfig(temperature=1.0, confidence_power=0.0, sample_weighting="none", max_certainty=1.0)
    fusion = Fusion(1, 3, cfg, CONSTANT)
    fusion.add("a", "t", 0, logits_of([[0.2, 0.3, 0.5]]), None, label_counts=np.array([5, 5, 0]))
    targets, mask = fusion.targets(0)
    assert mask.all()
    assert targets[0, 2] < 1e-6
    assert targets[0].sum() == pytest.approx(1.0)
    np.testing.assert_allclose(targets[0, :2], [0.4, 0.6], atol=1e-5)


def test_partial_coverage_via_sample_ids_gives_a_mask() -> None:
    fusion = Fusion(5, 2, EXACT, CONSTANT)
    fusion.add("a", "t", 0, logits_of([[0.9, 0.1], [0.3, 0.7]]), np.array([1, 3], dtype=np.uint32))
    fusion.add("b", "t", 0, logits_of([[0.5, 0.5]]), np.array([3], dtype=np.uint32))
    targets, mask = fusion.targets(0)
    assert mask.tolist() == [False, True, False, True, False]
    np.testing.assert_allclose(targets[1], [0.9, 0.1], atol=1e-6)
    np.testing.assert_allclose(targets[3], [0.4, 0.6], atol=1e-6)  # mean of a and b on sample 3
    np.testing.assert_allclose(targets[[0, 2, 4]], 0.5)  # uncovered: uniform placeholder


@pytest.mark.parametrize("method", ["median", "trimmed"])
def test_robust_methods_mask_partial_coverage(method: str) -> None:
    fusion = Fusion(4, 2, FusionConfig(method=method, temperature=1.0, max_certainty=1.0), CONSTANT)
    fusion.add("a", "t", 0, logits_of([[0.9, 0.1]]), np.array([2]))
    targets, mask = fusion.targets(0)
    assert mask.tolist() == [False, False, True, False]
    np.testing.assert_allclose(targets[2], [0.9, 0.1], atol=1e-5)


def test_staleness_decay_makes_an_old_contribution_weigh_less() -> None:
    policy = StalenessPolicy("polynomial", a=1.0, max_staleness=200)
    p_old = np.array([[0.8, 0.2]])
    p_new = np.array([[0.2, 0.8]])
    fusion = Fusion(1, 2, EXACT, policy)
    fusion.add("old", "t", 0, logits_of(p_old), None, trust=1.0)
    fusion.add("new", "t", 9, logits_of(p_new), None, trust=1.0)
    # at version 9 the old one is 9 versions stale: weight 1/(1+9)
    weights = fusion.current_weights(9)
    assert weights["old"] == pytest.approx(0.1) and weights["new"] == pytest.approx(1.0)
    targets, _ = fusion.targets(9)
    np.testing.assert_allclose(targets[0], (0.1 * p_old[0] + p_new[0]) / 1.1, atol=1e-6)
    # as the server moves on, both decay, and the old one still counts (fades, never vanishes)
    later, _ = fusion.targets(99)
    expected = (p_old[0] / 100 + p_new[0] / 91) / (1 / 100 + 1 / 91)
    np.testing.assert_allclose(later[0], expected, atol=1e-6)
    assert later[0, 0] > 0.2


def test_confidence_power_favours_the_confident_client() -> None:
    cfg = FusionConfig(temperature=1.0, confidence_power=1.0, class_weighting=False, sample_weighting="none",
                       max_certainty=1.0, confidence="absolute")
    fusion = Fusion(1, 2, cfg, CONSTANT)
    fusion.add("sure", "t", 0, logits_of([[0.9, 0.1]]), None)
    fusion.add("unsure", "t", 0, logits_of([[0.4, 0.6]]), None)
    targets, _ = fusion.targets(0)
    expected = (0.9 * np.array([0.9, 0.1]) + 0.6 * np.array([0.4, 0.6])) / 1.5
    np.testing.assert_allclose(targets[0], expected, atol=1e-6)


def test_replacing_a_senders_contribution() -> None:
    fusion = Fusion(1, 2, EXACT, CONSTANT)
    fusion.add("a", "t", 0, logits_of([[0.9, 0.1]]), None)
    fusion.add("b", "t", 0, logits_of([[0.5, 0.5]]), None)
    fusion.add("a", "t", 1, logits_of([[0.1, 0.9]]), None)  # a's newer update replaces its old one
    assert sorted(fusion.contributions) == ["a", "b"]
    assert fusion.contributions["a"].base_version == 1
    targets, _ = fusion.targets(1)
    np.testing.assert_allclose(targets[0], [0.3, 0.7], atol=1e-6)
    fusion.forget("a")
    np.testing.assert_allclose(fusion.targets(1)[0][0], [0.5, 0.5], atol=1e-6)


def _honest_and_outlier(n: int = 40, c: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, c, n)
    honest = []
    for _ in range(4):
        z = rng.normal(0, 0.5, (n, c))
        z[np.arange(n), truth] += 1.5  # right, but not very sure
        honest.append(z.astype(np.float32))
    perm = (np.arange(c) + 1) % c  # the outlier's classes are shifted: always confidently wrong
    bad = np.full((n, c), -10.0, dtype=np.float32)
    bad[np.arange(n), perm[truth]] = 10.0
    return truth, honest, bad


@pytest.mark.parametrize("method", ["median", "trimmed"])
def test_robust_methods_resist_one_outlier_client(method: str) -> None:
    truth, honest, bad = _honest_and_outlier()

    def fuse(method: str, **bounds: Any) -> np.ndarray:
        cfg = FusionConfig(method=method, temperature=1.0, sample_weighting="linear", trim_fraction=0.2,
                           **bounds)
        fusion = Fusion(len(truth), 10, cfg, CONSTANT)
        for i, z in enumerate(honest):
            fusion.add(f"h{i}", "t", 0, z, None, n_samples=50)
        # the outlier also claims a huge dataset: an unbounded weighted mean believes it
        fusion.add("evil", "t", 0, bad, None, n_samples=100_000)
        targets, mask = fusion.targets(0)
        assert mask.all()
        np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-5)
        return targets.argmax(axis=1)

    assert (fuse(method) == truth).mean() >= 0.95
    # the contrast: one of five, confident and claiming 2,000x the data, takes an unbounded mean over
    assert (fuse("mean", max_certainty=1.0, max_weight_ratio=1e9) == truth).mean() < 0.5


def test_fusion_config_validation() -> None:
    with pytest.raises(ValueError):
        FusionConfig(method="mode")
    with pytest.raises(ValueError):
        FusionConfig(sample_weighting="log")
    with pytest.raises(ValueError):
        FusionConfig(trim_fraction=0.5)


def test_staleness_enters_once_at_arrival_and_decays_after() -> None:
    """A contribution 8 versions stale weighs w(8) = 1/3 when it arrives (polynomial, a = 0.5), not
    w(8)**2 = 1/9, and keeps decaying along w afterwards."""
    policy = StalenessPolicy("polynomial", a=0.5)
    fusion = Fusion(1, 2, EXACT, policy)
    assert fusion.add("fresh", "t", 8, logits_of([[0.9, 0.1]]), None, version=8) == pytest.approx(1.0)
    assert fusion.add("stale", "t", 0, logits_of([[0.1, 0.9]]), None, version=8) == pytest.approx(1 / 3)
    assert fusion.current_weights(8) == {"fresh": pytest.approx(1.0), "stale": pytest.approx(1 / 3)}
    targets, _ = fusion.targets(8)
    np.testing.assert_allclose(targets[0], (np.array([0.9, 0.1]) + np.array([0.1, 0.9]) / 3) / (4 / 3), atol=1e-6)
    # 7 versions later: fresh is 7 old, stale 15 old
    weights = fusion.current_weights(15)
    assert weights["fresh"] == pytest.approx(1 / np.sqrt(8)) and weights["stale"] == pytest.approx(1 / 4)


def test_step_scale_damps_a_stale_arrival_even_alone() -> None:
    fusion = Fusion(1, 2, EXACT, StalenessPolicy("polynomial", a=0.5))
    assert fusion.step_scale(0) == 1.0
    assert fusion.step_scale(8) == pytest.approx(1 / 3)
    assert Fusion(1, 2, EXACT, CONSTANT).step_scale(8) == 1.0


def test_size_claims_are_capped_relative_to_recent_senders() -> None:
    """A client claiming 2**40 samples first is brought down to 2x the median once others arrive."""
    fusion = Fusion(1, 2, FusionConfig(temperature=1.0, confidence_power=0.0, max_certainty=1.0,
                                       sample_weighting="sqrt"), CONSTANT)
    fusion.add("liar", "t", 0, logits_of([[0.1, 0.9]]), None, n_samples=2**40)
    for k in range(9):
        fusion.add(f"h{k}", "t", 0, logits_of([[0.9, 0.1]]), None, n_samples=100)
    weights = fusion.current_weights(0)
    assert weights["liar"] == pytest.approx(2 * 10.0)  # 2 x sqrt(100)
    assert all(weights[f"h{k}"] == pytest.approx(10.0) for k in range(9))
    share = 20 / (20 + 90)
    np.testing.assert_allclose(fusion.targets(0)[0][0], share * np.array([0.1, 0.9]) + (1 - share) * np.array(
        [0.9, 0.1]), atol=1e-6)
    # a size the server knows caps the claim before the median does
    fusion.add("known", "t", 0, logits_of([[0.9, 0.1]]), None, n_samples=10**6, known_size=25)
    assert fusion.current_weights(0)["known"] == pytest.approx(5.0)


def test_a_one_hot_claim_counts_as_bounded_certainty() -> None:
    """One-hot logits of +-65504 weigh no more than ``max_certainty`` lets them."""
    cfg = FusionConfig(sample_weighting="none", max_certainty=0.4)
    fusion = Fusion(1, 10, cfg, CONSTANT)
    extreme = np.full((1, 10), -65504, dtype=np.float16)
    extreme[0, 3] = 65504
    fusion.add("x", "t", 0, extreme, None)
    probs = fusion.contributions["x"].probs[0]
    assert probs.max() == pytest.approx(0.1 + 0.4 * 0.9) and probs.argmax() == 3
    assert probs.max() - np.delete(probs, 3).max() == pytest.approx(0.4)
    with pytest.raises(ValueError):
        FusionConfig(max_certainty=0.0)


def test_relative_confidence_moves_a_clients_weight_between_samples_but_never_adds_to_it() -> None:
    """Relative confidence: a client sure on sample 0 and unsure on sample 1 teaches sample 0 more;
    a client certain everywhere weighs what a client unsure everywhere weighs."""
    cfg = FusionConfig(temperature=1.0, class_weighting=False, sample_weighting="none", max_certainty=1.0,
                       max_weight_ratio=10.0)
    fusion = Fusion(2, 2, cfg, CONSTANT)
    fusion.add("knows-0", "t", 0, logits_of([[0.9, 0.1], [0.5, 0.5]]), None)  # conf 0.9, 0.5: mean 0.7
    fusion.add("sure", "t", 0, logits_of([[0.2, 0.8], [0.2, 0.8]]), None)  # conf 0.8 everywhere
    targets, _ = fusion.targets(0)
    g0, g1 = 0.9 / 0.7, 0.5 / 0.7
    np.testing.assert_allclose(targets[0], (g0 * np.array([0.9, 0.1]) + np.array([0.2, 0.8])) / (g0 + 1), atol=1e-6)
    np.testing.assert_allclose(targets[1], (g1 * np.array([0.5, 0.5]) + np.array([0.2, 0.8])) / (g1 + 1), atol=1e-6)
    # capped at max_weight_ratio times the client's share on any one sample
    capped = Fusion(100, 10, FusionConfig(class_weighting=False, sample_weighting="none", max_certainty=1.0),
                    CONSTANT)
    spike = np.zeros((100, 10), np.float32)
    spike[0, 3] = 60.0  # one-hot on sample 0, uniform on the other 99
    capped.add("spiky", "t", 0, spike, None)
    terms = capped._terms(capped.contributions["spiky"])[1].sum(axis=1)
    assert terms[0] == pytest.approx(2.0)  # 1.0 / mean 0.109 = 9.2, capped at 2
    np.testing.assert_allclose(terms[1:], 0.1 / 0.109, rtol=1e-3)
    with pytest.raises(ValueError):
        FusionConfig(confidence="loud")
