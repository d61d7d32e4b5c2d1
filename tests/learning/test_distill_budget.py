"""The server's latency budget: a distillation stops once its time is up, after at least one step."""

from __future__ import annotations

import numpy as np
import pytest

from koala_async.learning.distill import Distiller
from koala_async.learning.models import InputSpec, build_model
from koala_async.nodes.server import ServerConfig


def _distiller() -> tuple[Distiller, np.ndarray, np.ndarray, np.ndarray]:
    spec = InputSpec("image", (1, 8, 8), 10)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 1, 8, 8)).astype(np.float32)
    targets = np.full((64, 10), 0.1, dtype=np.float32)
    return Distiller(build_model("image-large", spec, seed=0)), x, targets, np.ones(64, dtype=bool)


def test_a_tiny_budget_cuts_the_steps_short_but_runs_one() -> None:
    distiller, x, targets, mask = _distiller()
    loss = distiller.distill(x, targets, mask, steps=500, max_seconds=1e-6)
    assert distiller.steps_done == 1
    assert np.isfinite(loss)


def test_without_a_budget_every_step_runs() -> None:
    distiller, x, targets, mask = _distiller()
    distiller.distill(x, targets, mask, steps=3)
    assert distiller.steps_done == 3


def test_server_config_checks_the_budget() -> None:
    with pytest.raises(ValueError, match="max_distill_seconds"):
        ServerConfig(max_distill_seconds=0)
    with pytest.raises(ValueError, match="latency_window"):
        ServerConfig(latency_window=-1)
    assert ServerConfig(max_distill_seconds=0.25).max_distill_seconds == 0.25
