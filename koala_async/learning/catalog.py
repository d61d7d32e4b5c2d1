"""The tier catalog, measured: parameters, bytes on disk, training FLOPs and peak training memory of
every architecture for one input spec.

- ``params``: counted from the built model.
- ``bytes_on_disk``: length of ``torch.save(model.state_dict())``.
- ``train_flops_per_sample``: one forward and backward pass counted by torch's ``FlopCounterMode``
  (any layer type), per sample. Counted at most once per architecture and machine, outside client
  processes: see :mod:`koala_async.learning.flops` (its first use costs a process about 90 MiB).
- ``peak_train_bytes``: *estimated*, fp32: weights + gradients + two Adam moments (4 x params) plus
  the activations of one batch kept for backward and their gradients (2 x the outputs of every leaf
  module, recorded with forward hooks).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import nn

from koala_async.core.tiering import TierSpec
from koala_async.learning.flops import train_flops_per_sample
from koala_async.learning.models import ARCHITECTURES, InputSpec, build_model, client_tiers, default_large

BATCH = 32


def _activation_elements(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        nonlocal total
        outs = out if isinstance(out, (tuple, list)) else (out,)
        total += sum(o.numel() for o in outs if isinstance(o, torch.Tensor))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def _measure_built(name: str, model: nn.Module, spec: InputSpec, flops: float,
                   batch_size: int = BATCH) -> TierSpec:
    params = sum(p.numel() for p in model.parameters())
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    x = torch.randn(batch_size, *spec.shape)
    peak = 4 * 4 * params + 2 * 4 * _activation_elements(model, x)
    return TierSpec(name=name, kind=spec.kind, params=params, bytes_on_disk=len(buf.getvalue()),
                    train_flops_per_sample=float(flops), peak_train_bytes=peak)


def measure_many(names: Sequence[str], spec: InputSpec, in_process: bool | None = None) -> tuple[TierSpec, ...]:
    """Build and measure each model name (built-in, import string or entry point) for ``spec``."""
    models = {name: build_model(name, spec, seed=0) for name in names}
    flops = train_flops_per_sample(models, spec, in_process=in_process)
    return tuple(_measure_built(name, models[name], spec, flops[name]) for name in names)


def measure(name: str, spec: InputSpec, in_process: bool | None = None) -> TierSpec:
    """Build model ``name`` for ``spec`` and measure it."""
    return measure_many([name], spec, in_process)[0]


@lru_cache(maxsize=16)
def tier_catalog(spec: InputSpec, names: tuple[str, ...] | None = None) -> tuple[TierSpec, ...]:
    """The client tiers for ``spec``, measured: the built-in ladder of its kind, smallest first, or the
    given ``names`` (a ladder of your own, which must also be ordered smallest first)."""
    return measure_many(names or tuple(client_tiers(spec.kind)), spec)


@lru_cache(maxsize=16)
def large_spec(spec: InputSpec, name: str | None = None) -> TierSpec:
    return measure(name or default_large(spec.kind), spec)


def default_spec(kind: str, shape: tuple[int, ...] | None = None, num_classes: int = 10) -> InputSpec:
    """The digits-sized spec of a kind unless told otherwise: (1, 8, 8) images or 64-vectors."""
    if kind not in {a.kind for a in ARCHITECTURES.values()}:
        raise ValueError(f"unknown input kind {kind!r}")
    return InputSpec(kind, shape or ((1, 8, 8) if kind == "image" else (64,)), num_classes)
