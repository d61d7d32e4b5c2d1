"""The server's large model as configured: built by name, started from pretrained weights, on a device.

Both server learners (KOALA's :mod:`~koala_async.learning.distill_learner` and FedAvg's
:mod:`~koala_async.learning.averaging_learner`) start from :func:`build_large`, so KOALA and FedAvg
fine-tune exactly the same network from exactly the same weights:

1. the model named by ``large_model`` (default: the first built-in large model of the data's kind),
   built with the server's seed (``key="large_model"`` in any error);
2. ``large_weights`` loaded into it (:func:`~koala_async.learning.weights.load_weights`): a classifier
   head trained for another class count is replaced by the fresh one, and the report says which
   tensors were loaded and which replaced;
3. ``device`` resolved (``auto``: CUDA, then MPS, then the CPU); the learner moves the model there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from koala_async.learning.device import resolve_device
from koala_async.learning.models import InputSpec, build_model, default_large, parameter_count
from koala_async.learning.weights import LoadReport, load_weights, resolve_weights

if TYPE_CHECKING:
    from koala_async.nodes.config import ServerConfig

log = logging.getLogger(__name__)


@dataclass
class LargeModel:
    name: str
    model: nn.Module
    device: torch.device
    weights: LoadReport | None  # None: random initial weights (the server's seed)
    weights_setting: str | None = None  # what the config said (``builtin:...`` or a path)

    def describe_weights(self) -> dict[str, Any] | None:
        """The load report as plain data, for the server's status and report (flat: a status's info is
        at most four levels deep, see core/info.py)."""
        if self.weights is None:
            return None
        r = self.weights
        return {"setting": self.weights_setting, "path": r.path, "loaded": len(r.loaded),
                "replaced": [f"{k}: {list(f)} -> {list(m)}" for k, f, m in r.replaced],
                "missing": list(r.missing), "unexpected": list(r.unexpected)}

    def describe(self) -> dict[str, Any]:
        """What the server adds to its status: the model, its size, device and starting weights."""
        return {"large_model": self.name, "large_model_params": parameter_count(self.model),
                "device": device_name(self.device), "large_weights": self.describe_weights()}


def device_name(device: torch.device) -> str:
    """``cpu``, ``mps`` or ``cuda:N`` (the index made explicit: ``cuda`` alone means the current GPU)."""
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def build_large(config: ServerConfig, spec: InputSpec) -> LargeModel:
    """Build the configured large model, load its weights, resolve its device (blocking)."""
    name = config.large_model or default_large(spec.kind)
    model = build_model(name, spec, seed=config.seed, key="large_model")
    report = None
    if config.large_weights is not None:
        report = load_weights(model, resolve_weights(config.large_weights, "large_weights"))
        log.info("large model %s: weights %s", name, report)
    device = resolve_device(config.device, "device")
    return LargeModel(name, model, device, report, config.large_weights)
