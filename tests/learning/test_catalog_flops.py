"""The catalog's FLOP counts (from layer shapes, light on memory) equal torch's FlopCounterMode's."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from koala_async.learning.catalog import BATCH, default_spec, train_flops
from koala_async.learning.models import ARCHITECTURES, InputSpec, build_model


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("shape", [None, "other"])
def test_flops_match_flop_counter_mode(name: str, shape: str | None) -> None:
    kind = ARCHITECTURES[name].kind
    spec = default_spec(kind) if shape is None else (
        InputSpec("image", (3, 32, 32), 10) if kind == "image" else InputSpec("vector", (20,), 5))
    model = build_model(name, spec, seed=0)
    x = torch.randn(BATCH, *spec.shape)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    assert train_flops(model, x) == counter.get_total_flops() > 0
