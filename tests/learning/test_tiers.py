"""The client tier ladder stays strictly ordered by parameters and training FLOPs on digits, MNIST and
CIFAR-sized inputs, and ``koala tiers`` shows it with the large models and the savings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from koala_async.learning import flops
from koala_async.learning.catalog import measure_many, tier_catalog
from koala_async.learning.models import InputSpec, client_tiers
from koala_async.tools.cli import main

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KOALA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(flops, "_memory", {})
    tier_catalog.cache_clear()
    return tmp_path


@pytest.mark.parametrize("shape", SHAPES)
def test_image_tiers_are_strictly_ordered_by_params_and_flops(shape: tuple[int, ...]) -> None:
    names = client_tiers("image")
    tiers = measure_many(names, InputSpec("image", shape, 10), in_process=True)
    params = [t.params for t in tiers]
    train_flops = [t.train_flops_per_sample for t in tiers]
    assert params == sorted(set(params)), dict(zip(names, params))
    assert train_flops == sorted(set(train_flops)), dict(zip(names, train_flops))


def test_the_ladder_has_batchnorm_and_depthwise_separable_tiers_and_keeps_its_names() -> None:
    names = client_tiers("image")
    assert names[:3] == ["image-tiny", "image-small", "image-medium"]
    spec = InputSpec("image", (1, 8, 8), 10)
    small = measure_many(["image-small"], spec, in_process=True)[0]
    assert 9_000 < small.params < 11_000  # the default tier stays the size it was on digits
    from koala_async.learning.models import build_model

    mobile = build_model("image-mobile", spec)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in mobile.modules())
    assert any(isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1 for m in mobile.modules())


def test_koala_tiers_lists_tiers_and_large_models_with_savings(capsys: pytest.CaptureFixture[str]) -> None:
    torch_threads = torch.get_num_threads()
    try:
        assert main(["tiers", "--kind", "image", "--input-shape", "3,32,32", "--large", "mobilenet_v2",
                     "--json"]) == 0
    finally:
        torch.set_num_threads(torch_threads)
    rows = json.loads(capsys.readouterr().out)["image"]
    by_name = {r["name"]: r for r in rows}
    clients = [r for r in rows if r["role"] == "client"]
    assert [r["name"] for r in clients] == client_tiers("image")
    assert by_name["mobilenet_v2"]["role"] == "server" and by_name["mobilenet_v2"]["flops_reduction"] == 0
    assert {"image-large", "resnet18"} <= {r["name"] for r in rows if r["role"] == "other"}
    for r in clients:  # every tier saves storage and FLOPs against a 2.2M-parameter MobileNetV2
        assert 0.9 < r["storage_reduction"] < 1 and 0 < r["flops_reduction"] < 1
    assert by_name["image-small"]["storage_reduction"] > by_name["image-mobile"]["storage_reduction"]


def test_koala_tiers_rejects_an_unknown_large_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tiers", "--kind", "image", "--large", "mobilenet"]) == 2
    err = capsys.readouterr().err
    assert "koala: error: [--large]: unknown model 'mobilenet'; did you mean 'mobilenet_v2'?" in err
