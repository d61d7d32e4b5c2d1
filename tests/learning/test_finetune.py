"""Fine-tuning controls of the server's Distiller: which parameters train, frozen BatchNorm statistics,
weight decay and the learning-rate schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from koala_async.learning.adam import AdamW

from koala_async.config import load_into
from koala_async.errors import ConfigError
from koala_async.learning.distill import Distiller
from koala_async.learning.finetune import FineTune
from koala_async.learning.models import InputSpec, build_model

SPEC = InputSpec("image", (1, 8, 8), 10)


def _data(n: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((n, 1, 8, 8), dtype=np.float32)
    targets = rng.dirichlet(np.ones(10), size=n).astype(np.float32)
    return x, targets, np.ones(n, dtype=bool)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_head_only_trains_the_classifier_and_keeps_frozen_batchnorm_statistics() -> None:
    model = build_model("image-mobile", SPEC, seed=0)
    before = _snapshot(model)
    distiller = Distiller(model, lr=1e-2, finetune=FineTune(train="head"))
    assert distiller.trainable == ["classifier.weight", "classifier.bias"]
    assert sum(len(g["params"]) for g in distiller.optimizer.param_groups) == 2
    distiller.distill(*_data(), steps=3)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"classifier.weight", "classifier.bias"}  # running_mean/var included: unchanged


def test_prefixes_choose_what_trains_and_a_typo_is_an_error() -> None:
    model = build_model("image-mobile", SPEC, seed=0)
    before = _snapshot(model)
    Distiller(model, lr=1e-2, finetune=FineTune(train=("features.12", "classifier"))).distill(*_data(), steps=2)
    changed = {k.rsplit(".", 1)[0] for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    # features.12 is a pointwise conv; the BatchNorm after it (features.13) is frozen: eval mode, so even
    # its running statistics stay as they were
    assert changed == {"features.12", "classifier"}
    with pytest.raises(ConfigError, match=r"\[finetune.train\]: \['featurs'\] name no parameter.*'features'"):
        Distiller(build_model("image-mobile", SPEC), finetune=FineTune(train=("featurs",)))


def test_all_trains_everything_as_before() -> None:
    model = build_model("image-small", SPEC, seed=0)
    before = _snapshot(model)
    distiller = Distiller(model, lr=1e-2)
    assert isinstance(distiller.optimizer, AdamW) and len(distiller.optimizer.param_groups) == 1
    distiller.distill(*_data(), steps=2)
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_weight_decay_applies_to_weights_not_biases() -> None:
    distiller = Distiller(build_model("image-mobile", SPEC), finetune=FineTune(weight_decay=0.05))
    decayed, plain = distiller.optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])
    # with no gradient signal (targets = the model's own softmax is hard to arrange), check decay alone:
    model = build_model("image-small", SPEC, seed=0)
    w0 = model.classifier[3].weight.detach().clone()
    d = Distiller(model, lr=0.1, finetune=FineTune(train="head", weight_decay=1.0))
    for p in d.optimizer.param_groups[0]["params"]:
        p.grad = torch.zeros_like(p)
    d.optimizer.step()
    assert torch.allclose(model.classifier[3].weight, w0 * (1 - 0.1 * 1.0))


def test_cosine_schedule_with_warmup() -> None:
    ft = FineTune(schedule="cosine", steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert ft.lr_factor(0) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(0))))
    assert ft.lr_factor(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.09)))
    assert ft.lr_factor(50) == pytest.approx(0.1 + 0.9 * 0.5)
    assert ft.lr_factor(100) == ft.lr_factor(500) == pytest.approx(0.1)
    assert FineTune().lr_factor(10_000) == 1.0
    distiller = Distiller(build_model("image-small", SPEC), lr=0.01, finetune=ft)
    distiller.distill(*_data(), steps=50)
    assert distiller.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * ft.lr_factor(49))
    assert distiller.current_lr() == pytest.approx(0.01 * ft.lr_factor(50))


@pytest.mark.parametrize("bad, key", [
    ({"train": "backbone"}, "finetune.train"), ({"schedule": "cosine"}, "needs finetune.steps"),
    ({"schedule": "step"}, "finetune.schedule"), ({"weight_decay": -1.0}, "weight_decay"),
    ({"min_lr_ratio": 2.0}, "min_lr_ratio"), ({"train": []}, "non-empty"),
])
def test_finetune_tables_load_from_toml_and_bad_ones_are_named(bad: dict[str, object], key: str) -> None:
    ok = load_into(FineTune, {"train": ["features.17", "classifier"], "weight_decay": 0.01, "schedule": "cosine",
                              "steps": 300, "warmup_steps": 20}, source="server.toml", prefix="finetune")
    assert ok.train == ("features.17", "classifier") and ok.steps == 300
    with pytest.raises(ConfigError, match=key):
        load_into(FineTune, bad, source="server.toml", prefix="finetune")
