"""Both directions of distillation: a client learns, a model moves toward soft targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from koala_async.learning import data as D
from koala_async.learning.distill import (
    Distiller,
    LocalTrainer,
    TrainConfig,
    accuracy,
    kd_loss,
    predict_logits,
)
from koala_async.learning.models import InputSpec, build_model


@pytest.fixture(scope="module")
def splits() -> D.Splits:
    return D.split(D.load_digits(), seed=0)


def test_kd_loss_is_zero_for_identical_distributions() -> None:
    logits = torch.randn(8, 10)
    for t in (1.0, 3.0):
        teacher = F.softmax(logits / t, dim=1)
        assert float(kd_loss(logits, teacher, t)) == pytest.approx(0.0, abs=1e-5)


def test_kd_loss_is_positive_and_scaled_by_t_squared() -> None:
    student = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    teacher = F.softmax(torch.randn(8, 10, generator=torch.Generator().manual_seed(1)), dim=1)
    loss1 = float(kd_loss(student, teacher, 1.0))
    assert loss1 > 0.05
    # at T the student logits are divided by T; feeding T * student recovers the T=1 KL, times T^2
    assert float(kd_loss(student * 3.0, teacher, 3.0)) == pytest.approx(9.0 * loss1, rel=1e-4)


def test_local_trainer_improves_over_its_untrained_start(splits: D.Splits) -> None:
    torch.manual_seed(0)
    model = build_model("image-tiny", splits.private.spec, seed=0)
    before = accuracy(model, splits.test.x, splits.test.y)
    trainer = LocalTrainer(model, TrainConfig(epochs=3, batch_size=32, lr=3e-3), seed=0)
    loss = trainer.train(splits.private.x, splits.private.y)
    after = accuracy(model, splits.test.x, splits.test.y)
    assert np.isfinite(loss)
    assert trainer.epochs_done == 3
    assert before < 0.3
    assert after > 0.7 and after > before + 0.4


def test_local_trainer_distils_teacher_knowledge_on_proxy(splits: D.Splits) -> None:
    # a teacher that always says class 3 on the proxy: with a heavy kd weight the student leans to 3
    proxy = splits.proxy.x
    teacher = np.full((len(proxy), 10), -5.0, dtype=np.float32)
    teacher[:, 3] = 5.0
    model = build_model("image-tiny", splits.private.spec, seed=1)
    trainer = LocalTrainer(model, TrainConfig(epochs=1, kd_weight=20.0, temperature=1.0), seed=1)
    trainer.train(splits.private.x[:200], splits.private.y[:200], proxy, teacher)
    share_3 = (predict_logits(model, proxy).argmax(axis=1) == 3).mean()
    assert share_3 > 0.5


def _mean_kl(model: torch.nn.Module, x: np.ndarray, targets: np.ndarray, t: float) -> float:
    logits = torch.from_numpy(predict_logits(model, x))
    return float(kd_loss(logits, torch.from_numpy(targets), t))


def test_distiller_moves_predictions_toward_soft_targets(splits: D.Splits) -> None:
    x, y = splits.proxy.x[:200], splits.proxy.y[:200]
    # soft targets of a teacher that names each digit's successor: learnable, but not what init says
    z = np.zeros((len(x), 10), dtype=np.float32)
    z[np.arange(len(x)), (y + 1) % 10] = 8.0
    targets = F.softmax(torch.from_numpy(z) / 3.0, dim=1).numpy()
    model = build_model("image-small", splits.proxy.spec, seed=0)
    distiller = Distiller(model, lr=3e-3, temperature=3.0, batch_size=64, seed=0)
    before = _mean_kl(model, x, targets, 3.0)
    loss = distiller.distill(x, targets, np.ones(len(x), dtype=bool), steps=150)
    after = _mean_kl(model, x, targets, 3.0)
    assert np.isfinite(loss) and distiller.steps_done == 150
    assert after < 0.5 * before
    agree = (predict_logits(model, x).argmax(axis=1) == (y + 1) % 10).mean()
    assert agree > 0.8


def test_distiller_trains_only_on_masked_samples(splits: D.Splits) -> None:
    x = splits.proxy.x[:100]
    targets = np.full((100, 10), 0.1, dtype=np.float32)
    targets[:, 7] = 0.91
    targets /= targets.sum(axis=1, keepdims=True)
    model = build_model("image-tiny", splits.proxy.spec, seed=0)
    distiller = Distiller(model, lr=1e-2, temperature=1.0, seed=0)
    assert np.isnan(distiller.distill(x, targets, np.zeros(100, dtype=bool), steps=10))
    assert distiller.steps_done == 0  # nothing to learn from: no step taken
    mask = np.zeros(100, dtype=bool)
    mask[:50] = True
    first = distiller.distill(x, targets, mask, steps=60)
    assert np.isfinite(first)
    assert (predict_logits(model, x[:50]).argmax(axis=1) == 7).mean() > 0.9


def test_build_model_checks_kind_and_name(splits: D.Splits) -> None:
    from koala_async.learning.models import client_tiers, default_large, default_tier

    assert client_tiers("image") == ["image-tiny", "image-small", "image-medium", "image-mobile"]
    assert default_large("vector") == "vector-large" and default_large("image") == "image-large"
    assert default_tier("image") == "image-small" == client_tiers("image")[1]
    with pytest.raises(KeyError):
        build_model("image-huge", splits.proxy.spec)
    with pytest.raises(ValueError):
        build_model("vector-small", splits.proxy.spec)
    a = build_model("image-small", splits.proxy.spec, seed=4)
    b = build_model("image-small", splits.proxy.spec, seed=4)
    x = splits.proxy.x[:5]
    np.testing.assert_array_equal(predict_logits(a, x), predict_logits(b, x))
    assert predict_logits(a, x).shape == (5, 10)


def test_random_shift_moves_each_image_by_at_most_one_pixel() -> None:
    from koala_async.learning.distill import random_shift

    x = torch.rand(64, 1, 8, 8) + 0.1  # strictly positive: zeros in the output can only be fill
    out = random_shift(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    seen = set()
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(3) for dx in range(3)
                   if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert len(matches) == 1, f"image {i} is not a one-pixel translation of its input"
        seen.add(matches[0])
    assert len(seen) > 4  # offsets vary across the batch
    again = random_shift(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded: reproducible


def test_distiller_with_shift_augmentation_still_fits_and_rejects_unknown(splits: D.Splits) -> None:
    x, y = splits.proxy.x[:200], splits.proxy.y[:200]
    z = np.zeros((len(x), 10), dtype=np.float32)
    z[np.arange(len(x)), y] = 8.0
    targets = F.softmax(torch.from_numpy(z) / 3.0, dim=1).numpy()
    model = build_model("image-small", splits.proxy.spec, seed=0)
    distiller = Distiller(model, lr=3e-3, temperature=3.0, batch_size=64, seed=0, augment="shift")
    distiller.distill(x, targets, np.ones(len(x), dtype=bool), steps=200)
    assert (predict_logits(model, x).argmax(axis=1) == y).mean() > 0.8
    with pytest.raises(ValueError, match="augment"):
        Distiller(model, augment="rotate")


def test_uint8_proxy_pixels_train_exactly_as_the_float_images_they_encode() -> None:
    """A proxy set sent in its own dtype (uint8) is read as x / 255 one minibatch at a time: the server's
    Distiller and a client's LocalTrainer take the very same steps as on the float32 images."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (96, 1, 8, 8), dtype=np.uint8)
    floats = pixels.astype(np.float32) / 255.0
    spec = InputSpec("image", (1, 8, 8), 10)
    targets = F.softmax(torch.from_numpy(rng.normal(size=(96, 10)).astype(np.float32)), dim=1).numpy()
    private_x, private_y = floats[:40], np.arange(40) % 10
    teacher = rng.normal(size=(96, 10)).astype(np.float32)
    weights = []
    for proxy in (pixels, floats):
        large = build_model("image-tiny", spec, seed=0)
        Distiller(large, seed=0, augment="shift").distill(proxy, targets, np.ones(96, dtype=bool), steps=6)
        small = build_model("image-tiny", spec, seed=1)
        LocalTrainer(small, TrainConfig(epochs=1, batch_size=16), seed=0).train(private_x, private_y, proxy, teacher)
        weights.append([p.detach().clone() for p in (*large.parameters(), *small.parameters())])
        np.testing.assert_array_equal(predict_logits(large, pixels), predict_logits(large, floats))
    for a, b in zip(*weights, strict=True):
        assert torch.equal(a, b)
