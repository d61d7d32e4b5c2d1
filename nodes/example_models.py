"""Bring your own models: an example module of model factories.

A model name in a node config may be an import string ``module:factory``. The module must be
importable by the process that builds the model, so either install it in a package or put its
directory on PYTHONPATH. For this file, run the node from the repository root with::

    PYTHONPATH=nodes koala server --config nodes/server.toml

and name the models in the config::

    [server]
    large_model = "example_models:wide_cnn"     # the server's large model
    [client]
    tier = "example_models:small_cnn"          # a client's small model

A factory takes the data's ``InputSpec`` (``kind`` "image" or "vector", ``shape`` such as (1, 28, 28),
``num_classes``) and returns a ``torch.nn.Module`` mapping a (batch, *shape) float tensor in [0, 1]
to (batch, num_classes) logits. It runs once per node, before training, with the seed already set.
An installed package can also register a plain name instead of the import string::

    [project.entry-points."koala_async.models"]
    wide-cnn = "my_package.models:wide_cnn"

To fine-tune pretrained weights, give the server ``large_weights = "PATH"`` (a ``.safetensors`` file or
a ``torch.save``'d state dict whose names match this module's parameters); a classifier head trained
for another number of classes is replaced by the fresh one built here for ``num_classes``.
"""

from __future__ import annotations

import torch
from torch import nn

from koala_async.learning.models import InputSpec


def _check_image(spec: InputSpec) -> None:
    if spec.kind != "image" or len(spec.shape) != 3:
        raise ValueError(f"this model needs (C, H, W) images, the data is {spec.kind} {spec.shape}")


class SmallCNN(nn.Module):
    """About 5k parameters at any image size: two conv blocks, then global average pooling."""

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        _check_image(spec)
        channels = spec.shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(32, spec.num_classes)  # the last Linear: what fine-tuning calls the head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, C, H, W) -> (B, 32) -> (B, classes)


def small_cnn(spec: InputSpec) -> nn.Module:
    """A client tier of your own: ``tier = "example_models:small_cnn"``."""
    return SmallCNN(spec)


def wide_cnn(spec: InputSpec) -> nn.Module:
    """A large server model of your own (about 1.2M parameters): VGG-style blocks with BatchNorm."""
    _check_image(spec)
    layers: list[nn.Module] = []
    c_in = spec.shape[0]
    for c_out in (64, 128, 256):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                   nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                   nn.MaxPool2d(2, ceil_mode=True)]
        c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(c_in, spec.num_classes))
