"""Fine-tuning controls for the server's large model: what trains, weight decay, the learning-rate
schedule. :class:`FineTune` is a frozen dataclass a server config can embed as a ``[finetune]`` table.

- ``train``: ``"all"``; ``"head"`` (the classifier only, see
  :func:`~koala_async.learning.weights.head_prefix`: a linear probe on pretrained features); or a list
  of parameter-name prefixes (``["features.17", "features.18", "classifier"]``). Frozen parameters get
  ``requires_grad = False`` and stay out of the optimizer; BatchNorm layers whose parameters are all
  frozen stay in eval mode, so their running statistics keep the pretrained values.
- ``weight_decay``: AdamW's decoupled decay, applied to weight matrices and kernels only (not to
  biases and norm scales, the usual practice).
- ``schedule``: ``"constant"`` or ``"cosine"`` from the base lr down to ``min_lr_ratio x lr`` over
  ``steps`` steps (then constant); ``warmup_steps`` ramps the lr linearly up to the base first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from koala_async.errors import ConfigError
from koala_async.learning.weights import head_prefix

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class FineTune:
    train: str | tuple[str, ...] = "all"  # "all", "head", or parameter-name prefixes
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant" or "cosine"
    steps: int = 0  # cosine: the decay horizon in distillation steps
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.train, list):  # a list from code or TOML; keep the dataclass hashable
            object.__setattr__(self, "train", tuple(self.train))
        if isinstance(self.train, tuple) and (not self.train or not all(isinstance(p, str) and p
                                                                        for p in self.train)):
            raise ValueError("finetune.train: a list of parameter-name prefixes must be non-empty strings")
        if isinstance(self.train, str) and self.train not in ("all", "head"):
            raise ValueError(f"finetune.train must be 'all', 'head' or a list of prefixes, got {self.train!r}")
        if self.weight_decay < 0:
            raise ValueError(f"finetune.weight_decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"finetune.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "cosine" and self.steps <= 0:
            raise ValueError("finetune.schedule 'cosine' needs finetune.steps > 0 (the decay horizon)")
        if self.steps < 0 or self.warmup_steps < 0:
            raise ValueError("finetune.steps and finetune.warmup_steps must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"finetune.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def lr_factor(self, step: int) -> float:
        """The multiple of the base lr at 0-based ``step``."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.schedule == "constant":
            return warm
        t = min(step, self.steps) / self.steps
        return warm * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def apply_trainable(model: nn.Module, train: str | tuple[str, ...], key: str = "finetune.train") -> list[str]:
    """Set ``requires_grad`` per ``train`` and return the names of the trainable parameters.

    A prefix that names no parameter is a ``ConfigError`` (a typo would otherwise freeze everything).
    """
    names = [name for name, _ in model.named_parameters()]
    if train == "all":
        prefixes: tuple[str, ...] = ("",)
    elif train == "head":
        prefixes = (head_prefix(model),)
    else:
        prefixes = tuple(train)
        unmatched = [p for p in prefixes if not any(_matches(n, p) for n in names)]
        if unmatched:
            top = sorted({n.split(".")[0] for n in names})
            raise ConfigError(f"{unmatched} name no parameter of {type(model).__name__}; its top-level "
                              f"modules are {top}", key=key)
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(any(p == "" or _matches(name, p) for p in prefixes))
        if param.requires_grad:
            trainable.append(name)
    return trainable


def frozen_norms(model: nn.Module) -> list[nn.Module]:
    """Normalisation layers whose parameters are all frozen: they must stay in eval mode."""
    norms = (nn.modules.batchnorm._BatchNorm,)
    return [m for m in model.modules() if isinstance(m, norms)
            and any(True for _ in m.parameters()) and not any(p.requires_grad for p in m.parameters())]


def set_train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    """``model.train()``, except the frozen normalisation layers, which keep their statistics."""
    model.train()
    for m in frozen:
        m.eval()


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """AdamW parameter groups: decay on trainable tensors of rank >= 2, none on biases and norm scales.

    One group when there is no decay, so checkpoints of optimizers made before these controls load."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no parameter is left to train", key="finetune.train")
    if weight_decay == 0:
        return [{"params": params, "weight_decay": 0.0}]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
