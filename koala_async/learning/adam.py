"""Adam (client models) and AdamW (the server's large model), without ``torch.optim``.

``torch.optim.Optimizer`` imports ``torch._dynamo`` (and with it sympy and inductor) the first time
one of its methods runs, to mark them as not compilable: about 75 MiB of resident memory that a
Raspberry-Pi-class client training a 1,000-parameter model has no use for. This is the same update
as ``torch.optim.Adam`` with ``weight_decay=0`` and ``amsgrad=False`` (Kingma and Ba, 2015, with
torch's bias-correction arrangement); ``tests/learning/test_adam.py`` checks they stay equal.

:class:`AdamW` is ``torch.optim.AdamW`` (decoupled weight decay, single-tensor CPU path) with parameter
groups, ``param_groups`` whose ``lr`` a schedule may set, and a ``state_dict`` in torch's layout, so
checkpoints written with torch's optimizer load into it. On a server the compiler stack cost about 2 s
of CPU (5 s of wall time on a loaded 2-core machine) at the first step: the first version's latency.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

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


class AdamW:
    """``torch.optim.AdamW`` for ``params``: tensors, or groups ``{"params": [...], "weight_decay": wd,
    "lr": lr}`` (missing settings take the constructor's)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        if lr <= 0 or eps <= 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"bad AdamW settings: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        items = list(params)
        groups = items if items and isinstance(items[0], dict) else [{"params": items}]
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        self.param_groups: list[dict[str, Any]] = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state.get(p)
                if st is None:
                    st = self.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                          "exp_avg_sq": torch.zeros_like(p)}
                st["step"] += 1
                step = float(st["step"])
                grad, m, v = p.grad, st["exp_avg"], st["exp_avg_sq"]
                p.mul_(1 - lr * decay)
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2 ** step)).add_(eps)
                p.addcdiv_(m, denom, value=-lr / (1 - beta1 ** step))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        """torch's layout: ``state`` keyed by the parameter's index over all groups, groups with indices."""
        index = {id(p): i for i, p in enumerate(self._params())}
        groups, start = [], 0
        for g in self.param_groups:
            groups.append({**{k: v for k, v in g.items() if k != "params"},
                           "params": list(range(start, start + len(g["params"])))})
            start += len(g["params"])
        return {"state": {index[id(p)]: {k: t.clone() for k, t in st.items()} for p, st in self.state.items()},
                "param_groups": groups}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Undo :meth:`state_dict` (also one written by ``torch.optim.AdamW`` for the same groups)."""
        groups = state["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(own["params"]) for g, own in zip(groups, self.param_groups, strict=True)):
            raise ValueError("optimizer state does not match these parameter groups")
        params = self._params()
        for g, own in zip(groups, self.param_groups, strict=True):
            for key in ("lr", "eps", "weight_decay"):
                own[key] = float(g[key])
            own["betas"] = tuple(float(b) for b in g["betas"])
        self.state = {}
        for i, st in state["state"].items():
            p = params[int(i)]
            self.state[p] = {"step": torch.as_tensor(st["step"], dtype=torch.float32).clone(),
                             "exp_avg": torch.as_tensor(st["exp_avg"]).to(p.dtype).clone(),
                             "exp_avg_sq": torch.as_tensor(st["exp_avg_sq"]).to(p.dtype).clone()}
