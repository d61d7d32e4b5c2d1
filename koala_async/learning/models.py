"""Small client models (tiers) and the large server models, written by hand (no torchvision).

Two input kinds: ``image`` (C, H, W) and ``vector`` (D,). Each kind has a ladder of client tiers from
tiny to medium, strictly ordered by parameters *and* training FLOPs on 1x8x8, 1x28x28 and 3x32x32
inputs (``tests/learning/test_tiers.py``), and large server models: our own CNN and MLP, and the
ImageNet architectures of :mod:`koala_async.learning.imagenet` (``mobilenet_v2``, ``resnet18``; an
``@SIDE`` suffix such as ``mobilenet_v2@64`` resizes inputs to SIDE x SIDE first). Shapes are noted
where they change.

Any other model comes in by name through :mod:`koala_async.learning.registry` (an import string
``package.module:factory`` or an installed entry point); :func:`build_model` accepts all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from koala_async.learning.imagenet import MobileNetV2, ResNet18


@dataclass(frozen=True)
class InputSpec:
    kind: str  # "image" or "vector"
    shape: tuple[int, ...]  # (C, H, W) or (D,)
    num_classes: int

    @property
    def features(self) -> int:
        return math.prod(self.shape)


class MLP(nn.Module):
    """Fully connected layers; with ``pool_to``, images larger than that side are first averaged down
    to ``pool_to x pool_to``, so the model's size does not grow with the input (the tiny tier)."""

    def __init__(self, spec: InputSpec, hidden: tuple[int, ...], pool_to: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = spec.features
        if pool_to is not None and spec.kind == "image" and max(spec.shape[1:]) > pool_to:
            layers.append(nn.AdaptiveAvgPool2d(pool_to))  # (B, C, H, W) -> (B, C, pool_to, pool_to)
            width = spec.shape[0] * pool_to * pool_to
        layers.append(nn.Flatten())
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, spec.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, *shape) -> (B, C)


class ConvNet(nn.Module):
    """conv-relu blocks, a 2x2 max-pool after each block while the map is wider than 4, an adaptive
    pool to 4x4, then a two-layer classifier."""

    def __init__(self, spec: InputSpec, channels: tuple[int, ...], head: int) -> None:
        super().__init__()
        if spec.kind != "image" or len(spec.shape) != 3:
            raise ValueError(f"ConvNet needs image input (C, H, W), got {spec}")
        in_ch, size = spec.shape[0], min(spec.shape[1:])
        blocks: list[nn.Module] = []
        for ch in channels:
            blocks += [nn.Conv2d(in_ch, ch, 3, padding=1), nn.ReLU()]
            if size > 4:
                blocks.append(nn.MaxPool2d(2, ceil_mode=True))
                size = (size + 1) // 2
            in_ch = ch
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d((4, 4)))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(in_ch * 16, head), nn.ReLU(), nn.Linear(head, spec.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, C_in, H, W) -> (B, C_last, 4, 4)
        return self.classifier(h)  # -> (B, classes)


class SeparableNet(nn.Module):
    """A MobileNet-v1-style tier: a 3x3 conv stem, then depthwise-separable blocks (3x3 depthwise +
    1x1 pointwise, each followed by BatchNorm and ReLU), each halving the map while it is wider than
    ``min_side``, global average pooling and one linear classifier. Few parameters for its FLOPs."""

    def __init__(self, spec: InputSpec, stem: int, widths: tuple[int, ...], min_side: int = 2) -> None:
        super().__init__()
        if spec.kind != "image" or len(spec.shape) != 3:
            raise ValueError(f"SeparableNet needs image input (C, H, W), got {spec}")
        size = min(spec.shape[1:])
        layers: list[nn.Module] = [nn.Conv2d(spec.shape[0], stem, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(stem), nn.ReLU()]
        c_in = stem
        for c_out in widths:
            stride = 2 if size > min_side else 1
            size = (size + 1) // 2 if stride == 2 else size
            layers += [nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in),
                       nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (B, C, H, W) -> (B, widths[-1]) -> (B, classes)


@dataclass(frozen=True)
class Architecture:
    name: str
    kind: str
    role: str  # "client" or "server"
    build: Callable[..., nn.Module]  # build(spec) -> model; sized ones also take side=
    description: str
    sized: bool = False  # takes an input side: NAME@SIDE resizes inputs to SIDE x SIDE


def _arch(name: str, kind: str, role: str, build: Callable[..., nn.Module], desc: str,
          sized: bool = False) -> Architecture:
    return Architecture(name, kind, role, build, desc, sized)


# Client tiers, smallest first within each kind; then the large server models.
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    _arch("image-tiny", "image", "client", lambda s: MLP(s, (16,), pool_to=8),
          "MLP, one hidden layer of 16, on the image averaged down to at most 8x8"),
    _arch("image-small", "image", "client", lambda s: ConvNet(s, (8, 16), 32), "CNN 8-16 channels, head 32"),
    _arch("image-medium", "image", "client", lambda s: ConvNet(s, (16, 32), 64), "CNN 16-32 channels, head 64"),
    _arch("image-mobile", "image", "client", lambda s: SeparableNet(s, 32, (64, 128, 256)),
          "depthwise-separable CNN with BatchNorm, stem 32, blocks 64-128-256"),
    _arch("image-large", "image", "server", lambda s: ConvNet(s, (32, 64, 128), 256),
          "CNN 32-64-128 channels, head 256"),
    _arch("mobilenet_v2", "image", "server", lambda s, side=None: MobileNetV2(s.num_classes, s.shape[0], side),
          "MobileNetV2, torchvision layout (ImageNet weights: imagenet_mobilenet_v2_path())", sized=True),
    _arch("resnet18", "image", "server", lambda s, side=None: ResNet18(s.num_classes, s.shape[0], side),
          "ResNet-18, torchvision layout", sized=True),
    _arch("vector-tiny", "vector", "client", lambda s: MLP(s, (16,)), "MLP 16"),
    _arch("vector-small", "vector", "client", lambda s: MLP(s, (64,)), "MLP 64"),
    _arch("vector-medium", "vector", "client", lambda s: MLP(s, (128, 64)), "MLP 128-64"),
    _arch("vector-large", "vector", "server", lambda s: MLP(s, (1024, 1024, 512)), "MLP 1024-1024-512"),
)}


def client_tiers(kind: str) -> list[str]:
    """Client tier names for an input kind, smallest first."""
    return [a.name for a in ARCHITECTURES.values() if a.kind == kind and a.role == "client"]


def default_tier(kind: str) -> str:
    """The tier a client trains when none is configured: ``image-small`` / ``vector-small``."""
    return f"{kind}-small"


def large_models(kind: str) -> list[str]:
    """Built-in server models for an input kind; the first is the default."""
    return [a.name for a in ARCHITECTURES.values() if a.kind == kind and a.role == "server"]


def default_large(kind: str) -> str:
    return large_models(kind)[0]


def build_model(name: str, spec: InputSpec, seed: int | None = None, *, key: str = "model",
                allow_imports: bool = True) -> nn.Module:
    """Instantiate model ``name`` for ``spec`` (deterministically when ``seed`` is given).

    ``name`` is a built-in name (``image-small``, ``mobilenet_v2@64``), an import string
    ``package.module:factory`` or an entry point of group ``koala_async.models``; see
    :mod:`koala_async.learning.registry`. Errors are :class:`~koala_async.learning.registry.ModelError`
    (a ``ConfigError``) naming ``key``; an unknown name is also a ``KeyError`` and a model for the wrong
    input kind also a ``ValueError``, as before. ``allow_imports=False`` refuses import strings and
    entry points: use it for names that arrive over the network.
    """
    from koala_async.learning.registry import resolve_model  # registry imports this module

    ref = resolve_model(name, key=key, allow_imports=allow_imports)
    ref.check_kind(spec.kind, key)
    if seed is not None:
        torch.manual_seed(seed)
    return ref.build(spec, key)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
