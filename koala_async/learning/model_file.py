"""A client's small model on disk: its weights and its architecture's name, in one safetensors file.

The scenario runner evaluates every client's final small model on the server's held-out test split
after the run (the test split never reaches a client): a client given ``model_out`` writes its model
there after each training, replacing the file atomically, so a crashed client leaves its last one.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from koala_async.errors import ConfigError
from koala_async.learning.models import InputSpec, build_model

TIER_KEY = "koala_tier"


def save_model(model: nn.Module, tier: str, path: str | Path) -> None:
    """Write ``model``'s weights and ``tier`` to ``path`` atomically (a temporary file, then rename)."""
    from safetensors.torch import save_file

    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={TIER_KEY: tier})
    os.replace(tmp, target)


def load_model(path: str | Path, spec: InputSpec, allow_imports: bool = False) -> tuple[nn.Module, str]:
    """The model written by :func:`save_model`, rebuilt for ``spec``, and its tier name. A tier that is
    an import string is imported only with ``allow_imports`` (a file you wrote yourself); ValueError
    names the file for anything that cannot be rebuilt."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        tier = (f.metadata() or {}).get(TIER_KEY)
    if not tier:
        raise ValueError(f"{path}: no {TIER_KEY} in the file's metadata")
    try:
        model = build_model(tier, spec, seed=0, allow_imports=allow_imports)
    except (KeyError, ValueError, ConfigError) as exc:
        raise ValueError(f"{path}: cannot rebuild tier {tier!r}: {exc}") from None
    model.load_state_dict(load_file(str(path)))
    return model, tier
