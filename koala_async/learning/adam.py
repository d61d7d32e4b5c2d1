"""Adam for client models, without ``torch.optim``.

``torch.optim.Optimizer`` imports ``torch._dynamo`` (and with it sympy and inductor) the first time
one of its methods runs, to mark them as not compilable: about 75 MiB of resident memory that a
Raspberry-Pi-class client training a 1,000-parameter model has no use for. This is the same update
as ``torch.optim.Adam`` with ``weight_decay=0`` and ``amsgrad=False`` (Kingma and Ba, 2015, with
torch's bias-correction arrangement); ``tests/learning/test_adam.py`` checks they stay equal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class Adam:
    """``step()`` and ``zero_grad()`` like ``torch.optim.Adam``; state in ``exp_avg``/``exp_avg_sq``."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if lr <= 0 or eps <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"bad Adam settings: lr={lr}, betas={betas}, eps={eps}")
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps = lr, betas, eps
        self.steps = [0] * len(self.params)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue  # as torch: a parameter without a gradient keeps its state and step count
            self.steps[i] += 1
            grad, m, v = p.grad, self.exp_avg[i], self.exp_avg_sq[i]
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = self.lr / (1 - beta1 ** self.steps[i])
            denom = (v.sqrt() / math.sqrt(1 - beta2 ** self.steps[i])).add_(self.eps)
            p.addcdiv_(m, denom, value=-step_size)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()
