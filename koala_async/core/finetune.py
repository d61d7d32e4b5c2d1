"""What the server's large model fine-tunes, as plain data: :class:`FineTune`, the ``[server.finetune]``
table. Pure (no torch), so a config can hold it without importing torch; the torch side that applies it
(freezing, parameter groups, the lr at each step) is :mod:`koala_async.learning.finetune`.

- ``train``: ``"all"``; ``"head"`` (the classifier only: a linear probe on pretrained features); or a
  list of parameter-name prefixes (``["features.17", "features.18", "classifier"]``).
- ``weight_decay``: AdamW's decoupled decay, on weight matrices and kernels only.
- ``schedule``: ``"constant"`` or ``"cosine"`` from the base lr down to ``min_lr_ratio x lr`` over
  ``steps`` steps (then constant); ``warmup_steps`` ramps the lr linearly up to the base first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
