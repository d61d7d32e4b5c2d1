"""Bring your own model: a model name resolves to a factory ``factory(spec) -> torch.nn.Module``.

Wherever a model name is accepted (the server's large model, a client tier, a list of tiers) it may be

1. a built-in name from :data:`koala_async.learning.models.ARCHITECTURES` (``image-small``,
   ``mobilenet_v2``); the ImageNet ones also as ``NAME@SIDE`` (inputs resized to SIDE x SIDE);
2. an import string ``package.module:factory`` (``factory`` may be dotted: ``module:Class.build``).
   The module must be importable by the process that builds the model: installed, or its directory on
   ``PYTHONPATH``. ``nodes/example_models.py`` is a commented example;
3. a name that an installed package registers in the entry-point group ``koala_async.models``::

       [project.entry-points."koala_async.models"]
       my-cnn = "my_package.models:my_cnn"

Built-in names win over entry points of the same name. The factory is called with the data's
:class:`~koala_async.learning.models.InputSpec` (``kind``, ``shape``, ``num_classes``) and must return
a ``torch.nn.Module`` whose output is ``(batch, num_classes)`` logits.

:func:`check_model` resolves a name without building anything, so a config can be validated before
a node starts; every failure is a :class:`ModelError` (a ``ConfigError``) naming the config key, the
string, and what was tried.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from koala_async.errors import ConfigError
from koala_async.learning.models import ARCHITECTURES, InputSpec

ENTRY_POINT_GROUP = "koala_async.models"
_IMPORT_STRING = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_SIZED = re.compile(r"(.+)@(\d+)")


class ModelError(ConfigError, ValueError):
    """A model name that does not resolve, a factory that fails, or a model for the wrong input kind.

    Also a ``ValueError``: ``build_model`` raised that for a kind mismatch before names could be
    imported, and callers catch it."""


class UnknownModel(ModelError, KeyError):
    """No built-in, entry point or importable factory by that name (also a ``KeyError``, as before)."""

    __str__ = ConfigError.__str__  # not KeyError's, which would quote the whole message


@dataclass(frozen=True)
class ModelRef:
    """A resolved model name: where it came from and the factory that builds it."""

    name: str
    origin: str  # "built-in", "entry point ...", "import string"
    factory: Callable[[InputSpec], Any]
    kind: str | None = None  # the input kind, when known (built-ins)

    def check_kind(self, kind: str, key: str = "model") -> None:
        if self.kind is not None and self.kind != kind:
            raise ModelError(f"model {self.name!r} is for {self.kind} inputs, the data is {kind}", key=key)

    def build(self, spec: InputSpec, key: str = "model") -> nn.Module:
        """Call the factory; anything but an ``nn.Module`` (or an exception) becomes a ``ModelError``."""
        try:
            model = self.factory(spec)
        except ConfigError:
            raise
        except Exception as exc:
            raise ModelError(f"model {self.name!r} ({self.origin}) failed to build for {spec.kind} input "
                             f"{spec.shape}, {spec.num_classes} classes: {type(exc).__name__}: {exc}",
                             key=key) from exc
        if not isinstance(model, nn.Module):
            raise ModelError(f"model {self.name!r} ({self.origin}): the factory returned a "
                             f"{type(model).__name__}, not a torch.nn.Module", key=key)
        return model


def _builtin(name: str, key: str) -> ModelRef | None:
    if name in ARCHITECTURES:
        arch = ARCHITECTURES[name]
        return ModelRef(name, "built-in", arch.build, arch.kind)
    sized = _SIZED.fullmatch(name)
    if sized and sized.group(1) in ARCHITECTURES:
        arch = ARCHITECTURES[sized.group(1)]
        if not arch.sized:
            raise UnknownModel(f"model {name!r}: {arch.name!r} takes no @SIDE suffix (those that do: "
                               f"{', '.join(_sized_names())})", key=key)
        side = int(sized.group(2))
        if side < 1:
            raise ModelError(f"model {name!r}: the input side must be >= 1", key=key)
        return ModelRef(name, "built-in", partial(arch.build, side=side), arch.kind)
    return None


def _sized_names() -> list[str]:
    return [a.name for a in ARCHITECTURES.values() if a.sized]


def entry_point_names() -> list[str]:
    """Names installed packages register in the ``koala_async.models`` group."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})


def _from_entry_point(name: str, key: str) -> ModelRef | None:
    found = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        return None
    if len({ep.value for ep in found}) > 1:
        raise ModelError(f"model {name!r}: several installed packages register it in {ENTRY_POINT_GROUP!r}: "
                         f"{', '.join(sorted(ep.value for ep in found))}; use one as 'package.module:factory'",
                         key=key)
    ep = found[0]
    dist = getattr(ep, "dist", None)
    origin = f"entry point {ep.value!r}" + (f" of {dist.name}" if dist is not None else "")
    try:
        factory = ep.load()
    except Exception as exc:  # noqa: BLE001 - a third-party import: report it, do not crash on it
        raise ModelError(f"model {name!r}: cannot load {origin}: {type(exc).__name__}: {exc}", key=key) from None
    return ModelRef(name, origin, _callable(name, factory, origin, key))


def _callable(name: str, obj: object, origin: str, key: str) -> Callable[[InputSpec], Any]:
    if not callable(obj):
        raise ModelError(f"model {name!r} ({origin}) is a {type(obj).__name__}, not a callable "
                         "factory(spec) -> torch.nn.Module", key=key)
    return obj  # type: ignore[return-value]


def _from_import_string(name: str, key: str) -> ModelRef:
    if not _IMPORT_STRING.fullmatch(name):
        raise UnknownModel(f"model {name!r} is not an import string of the form 'package.module:factory'",
                           key=key)
    module_name, _, attr_path = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - ImportError or whatever the user's module raises at import
        raise ModelError(f"model {name!r}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}. "
                         "The module must be importable by this process: installed, or its directory on "
                         "PYTHONPATH", key=key) from None
    obj: object = module
    for i, part in enumerate(attr_path.split(".")):
        if not hasattr(obj, part):
            where = module_name if i == 0 else f"{module_name}:{'.'.join(attr_path.split('.')[:i])}"
            names = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))
            close = difflib.get_close_matches(part, names, n=1)
            file = getattr(module, "__file__", None)
            raise UnknownModel(f"model {name!r}: {where}{f' ({file})' if file and i == 0 else ''} has no "
                               f"attribute {part!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                               + f" (callables there: {', '.join(names[:20]) or 'none'})", key=key)
        obj = getattr(obj, part)
    return ModelRef(name, "import string", _callable(name, obj, "import string", key))


def resolve_model(name: str, key: str = "model", allow_imports: bool = True) -> ModelRef:
    """Resolve ``name`` (built-in, entry point or import string) without building a model.

    Raises :class:`ModelError` / :class:`UnknownModel` naming ``key`` and what was tried.
    ``allow_imports=False`` accepts built-in names only (for names that arrive over the network).
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownModel(f"model name must be a non-empty string, got {name!r}", key=key)
    ref = _builtin(name, key)
    if ref is not None:
        return ref
    if not allow_imports:
        raise UnknownModel(f"unknown model {name!r}: only built-in names are accepted here "
                           f"({', '.join(ARCHITECTURES)})", key=key)
    if ":" in name:
        return _from_import_string(name, key)
    ref = _from_entry_point(name, key)
    if ref is not None:
        return ref
    entry_points = entry_point_names()
    close = difflib.get_close_matches(name, [*ARCHITECTURES, *entry_points], n=1)
    raise UnknownModel(
        f"unknown model {name!r}" + (f"; did you mean {close[0]!r}?" if close else "") + " Tried: built-in "
        f"names ({', '.join(ARCHITECTURES)}; {' and '.join(_sized_names())} also as NAME@SIDE), entry points "
        f"in group {ENTRY_POINT_GROUP!r} ({', '.join(entry_points) or 'none installed'}); a model of your own "
        "is named by an import string 'package.module:factory'", key=key)


def check_model(name: str, key: str = "model", kind: str | None = None, allow_imports: bool = True) -> None:
    """Validate a configured model name before anything starts: resolve it (importing the module of an
    import string) and, given ``kind``, check a built-in's input kind. Builds nothing."""
    ref = resolve_model(name, key, allow_imports)
    if kind is not None:
        ref.check_kind(kind, key)
