"""Small client models (tiers) and the large server model, written by hand (no torchvision).

Two input kinds: ``image`` (C, H, W) and ``vector`` (D,). Each kind has a catalog of client tiers from
tiny to medium and one large model. Shapes are noted where they change.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class InputSpec:
    kind: str  # "image" or "vector"
    shape: tuple[int, ...]  # (C, H, W) or (D,)
    num_classes: int

    @property
    def features(self) -> int:
        return math.prod(self.shape)


class MLP(nn.Module):
    def __init__(self, spec: InputSpec, hidden: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = spec.features
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


@dataclass(frozen=True)
class Architecture:
    name: str
    kind: str
    role: str  # "client" or "server"
    build: Callable[[InputSpec], nn.Module]
    description: str


def _arch(name: str, kind: str, role: str, build: Callable[[InputSpec], nn.Module], desc: str) -> Architecture:
    return Architecture(name, kind, role, build, desc)


# Client tiers, smallest first within each kind; then the large server models.
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    _arch("image-tiny", "image", "client", lambda s: MLP(s, (16,)), "MLP, one hidden layer of 16"),
    _arch("image-small", "image", "client", lambda s: ConvNet(s, (8, 16), 32), "CNN 8-16 channels, head 32"),
    _arch("image-medium", "image", "client", lambda s: ConvNet(s, (16, 32), 64), "CNN 16-32 channels, head 64"),
    _arch("image-large", "image", "server", lambda s: ConvNet(s, (32, 64, 128), 256),
          "CNN 32-64-128 channels, head 256"),
    _arch("vector-tiny", "vector", "client", lambda s: MLP(s, (16,)), "MLP 16"),
    _arch("vector-small", "vector", "client", lambda s: MLP(s, (64,)), "MLP 64"),
    _arch("vector-medium", "vector", "client", lambda s: MLP(s, (128, 64)), "MLP 128-64"),
    _arch("vector-large", "vector", "server", lambda s: MLP(s, (1024, 1024, 512)), "MLP 1024-1024-512"),
)}


def client_tiers(kind: str) -> list[str]:
    """Client tier names for an input kind, smallest first."""
    return [a.name for a in ARCHITECTURES.values() if a.kind == kind and a.role == "client"]


def default_large(kind: str) -> str:
    return next(a.name for a in ARCHITECTURES.values() if a.kind == kind and a.role == "server")


def build_model(name: str, spec: InputSpec, seed: int | None = None) -> nn.Module:
    """Instantiate architecture ``name`` for ``spec`` (deterministically when ``seed`` is given)."""
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown model {name!r}; known: {sorted(ARCHITECTURES)}")
    arch = ARCHITECTURES[name]
    if arch.kind != spec.kind:
        raise ValueError(f"model {name!r} is for {arch.kind} inputs, the data is {spec.kind}")
    if seed is not None:
        torch.manual_seed(seed)
    return arch.build(spec)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
