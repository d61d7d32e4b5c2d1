"""Each version scored on validation and test; the best on validation kept with its weights, and a
last version below it said so."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from koala_async.learning.data import Dataset
from koala_async.learning.evaluation import VersionScores
from koala_async.learning.models import InputSpec

SPEC = InputSpec("vector", (2,), 2)


def labeled(n: int, seed: int) -> Dataset:
    x = np.random.default_rng(seed).normal(0, 1, (n, 2)).astype(np.float32)
    return Dataset(x, (x[:, 0] > 0).astype(np.int64), SPEC)


def model(sign: float) -> nn.Module:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-sign, 0.0], [sign, 0.0]]))
        layer.bias.zero_()
    return layer


def test_the_best_version_on_validation_is_kept_and_a_worse_last_one_is_flagged() -> None:
    scores = VersionScores(labeled(200, 0), labeled(200, 1))
    assert scores.evaluate(model(-1.0), 0) is False or scores.best is not None  # a first score is the best
    assert scores.evaluate(model(1.0), 1)  # right: the new best
    good = {k: v.clone() for k, v in model(1.0).state_dict().items()}
    assert not scores.evaluate(model(-1.0), 2)  # wrong: worse on validation, the best stays
    snap = scores.snapshot()
    assert snap["best_version"] == 1 and snap["best_validation_accuracy"] == 1.0
    assert snap["best_test_accuracy"] == 1.0 and snap["test_accuracy"] == 0.0
    assert snap["last_below_best"] is True
    assert scores.best_weights is not None
    for name, tensor in good.items():
        assert torch.equal(scores.best_weights[name], tensor)  # the weights of version 1, not 2
    restored = VersionScores(labeled(200, 0), labeled(200, 1))
    restored.restore(scores.state())
    assert restored.snapshot() == snap


def test_without_a_validation_split_nothing_is_chosen() -> None:
    scores = VersionScores(None, labeled(50, 1))
    assert not scores.evaluate(model(1.0), 3)
    assert scores.snapshot()["best_version"] is None and scores.test_accuracy == 1.0
