"""The tier catalog, measured: parameters, bytes on disk, training FLOPs and peak training memory of
every architecture for one input spec.

- ``params``: counted from the built model.
- ``bytes_on_disk``: length of ``torch.save(model.state_dict())``.
- ``train_flops_per_sample``: the multiply-adds of one forward and backward pass of a batch, divided
  by the batch size, counted the way ``torch.utils.flop_counter.FlopCounterMode`` counts them (matmuls
  and convolutions; element-wise ops such as ReLU and pooling are not counted, they are a rounding
  error here): per linear or conv layer, the forward, the weight gradient (as many again) and the
  input gradient (as many again, unless the layer's input needs no gradient). Counted from layer
  shapes with forward hooks rather than by running ``FlopCounterMode``, whose first use imports
  torch's compiler stack (sympy, dynamo, inductor: about 90 MiB a client would carry for nothing);
  ``tests/learning/test_catalog_flops.py`` checks the two agree for every architecture.
- ``peak_train_bytes``: *estimated*, fp32: weights + gradients + two Adam moments (4 x params) plus
  the activations of one batch kept for backward and their gradients (2 x the outputs of every leaf
  module, recorded with forward hooks).
"""

from __future__ import annotations

import io
from functools import lru_cache

import torch
from torch import nn

from koala_async.core.tiering import TierSpec
from koala_async.learning.models import ARCHITECTURES, InputSpec, build_model, client_tiers, default_large

BATCH = 32


def _activation_elements(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def train_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward and backward pass of ``model`` on batch ``x`` (FlopCounterMode's count)."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            forward = 2 * out.numel() * module.in_features  # (B, in) @ (in, out)
        else:
            assert isinstance(module, nn.Conv2d) and module.groups == 1
            c_out, c_in, kh, kw = module.weight.shape
            forward = 2 * out.shape[0] * out.shape[2] * out.shape[3] * c_out * c_in * kh * kw
        total += forward * (3 if inputs[0].requires_grad else 2)  # + weight grad (+ input grad)

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    unknown = [type(m).__name__ for m in model.modules() if not list(m.children())
               and any(p.requires_grad for p in m.parameters()) and not isinstance(m, (nn.Linear, nn.Conv2d))]
    if unknown:
        raise ValueError(f"cannot count FLOPs of layers {unknown}")
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.enable_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def measure(name: str, spec: InputSpec, batch_size: int = BATCH) -> TierSpec:
    """Build architecture ``name`` for ``spec`` and measure it."""
    model = build_model(name, spec, seed=0)
    params = sum(p.numel() for p in model.parameters())
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    x = torch.randn(batch_size, *spec.shape)
    flops = train_flops(model, x) / batch_size
    peak = 4 * 4 * params + 2 * 4 * _activation_elements(model, x)
    return TierSpec(name=name, kind=spec.kind, params=params, bytes_on_disk=len(buf.getvalue()),
                    train_flops_per_sample=float(flops), peak_train_bytes=peak)


@lru_cache(maxsize=16)
def tier_catalog(spec: InputSpec) -> tuple[TierSpec, ...]:
    """The client tiers for ``spec``'s kind, smallest first, measured."""
    return tuple(measure(name, spec) for name in client_tiers(spec.kind))


@lru_cache(maxsize=16)
def large_spec(spec: InputSpec, name: str | None = None) -> TierSpec:
    return measure(name or default_large(spec.kind), spec)


def default_spec(kind: str, shape: tuple[int, ...] | None = None, num_classes: int = 10) -> InputSpec:
    """The digits-sized spec of a kind unless told otherwise: (1, 8, 8) images or 64-vectors."""
    if kind not in {a.kind for a in ARCHITECTURES.values()}:
        raise ValueError(f"unknown input kind {kind!r}")
    return InputSpec(kind, shape or ((1, 8, 8) if kind == "image" else (64,)), num_classes)
