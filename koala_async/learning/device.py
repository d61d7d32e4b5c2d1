"""Which torch device the server's large model runs on: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``.

Only the server's distillation and evaluation move to an accelerator; clients are IoT-class and train
on their CPU. ``auto`` takes CUDA when a GPU is visible, then Apple's MPS, else the CPU.
"""

from __future__ import annotations

import re

import torch

from koala_async.errors import ConfigError

_NAME = re.compile(r"(auto|cpu|mps|cuda)(?::(\d+))?")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device = "auto", key: str = "device") -> torch.device:
    """The ``torch.device`` for ``name``; a device that is not there is a ``ConfigError`` naming ``key``."""
    if isinstance(name, torch.device):
        name = str(name)
    match = _NAME.fullmatch(name.strip().lower()) if isinstance(name, str) else None
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps", key=key)
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: no CUDA GPU is visible to torch {torch.__version__} "
                              f"(CUDA build: {torch.version.cuda or 'no, a CPU-only build'})", key=key)
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            raise ConfigError(f"device {name!r}: only {count} CUDA device(s), numbered 0..{count - 1}", key=key)
        return torch.device("cuda", int(index)) if index is not None else torch.device("cuda")
    if kind == "mps" and not _mps_available():
        raise ConfigError(f"device {name!r}: Apple MPS is not available here", key=key)
    return torch.device(kind)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s parameters live (the CPU for a model without any)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
