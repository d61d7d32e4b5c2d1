"""Vector inputs standardized by the proxy set's statistics: better accuracy on features of very
different scales, the same statistics on every node, images untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from vector_data import write_sensor_csv

from koala_async.learning import data as D
from koala_async.learning.distill import LocalTrainer, TrainConfig, accuracy
from koala_async.learning.models import build_model
from koala_async.learning.standardize import Standardizer, model_inputs


def test_standardizing_by_the_proxy_set_trains_a_far_better_model(tmp_path: Path) -> None:
    fed = D.federate(f"csv:{write_sensor_csv(tmp_path / 'sensors.csv')}", 0, 2, 5.0, 0.2, 0.25, 0.1)
    scale = Standardizer.fit(fed.splits.proxy.x)
    assert scale is not None
    shard, test = fed.client(0), fed.splits.test
    scores = []
    for s in (None, scale):
        trainer = LocalTrainer(build_model("vector-small", shard.spec, seed=0), TrainConfig(epochs=10), seed=0)
        trainer.train(model_inputs(shard.x, s), shard.y)
        scores.append(accuracy(trainer.model, model_inputs(test.x, s), test.y))
    raw, standardized = scores
    assert raw < 0.4 and standardized > 0.7, scores  # 4 classes: raw is about chance


def test_statistics_are_deterministic_per_feature_and_images_are_left_alone() -> None:
    rng = np.random.default_rng(1)
    x = (rng.normal(0, 1, (500, 3)) * [1e-3, 1.0, 1e4] + [0.2, -3.0, 5e3]).astype(np.float32)
    x[:, 1] = 7.0  # constant on the proxy set: only centred
    a, b = Standardizer.fit(x), Standardizer.fit(x.copy())
    assert a is not None and b is not None
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)
    z = a.apply(x)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(z[:, [0, 2]].std(axis=0), 1.0, rtol=1e-3)
    assert a.std[1] == 1.0 and z.dtype == np.float32
    assert Standardizer.fit(rng.random((10, 1, 8, 8)).astype(np.float32)) is None  # images keep their scale
    with pytest.raises(ValueError, match="features"):
        a.apply(x[:, :2])
