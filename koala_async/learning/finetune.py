"""Fine-tuning controls for the server's large model: what trains, weight decay, the learning-rate
schedule, applied to a model. :class:`FineTune` (the settings: a frozen dataclass the server config embeds as
``[server.finetune]``) lives in :mod:`koala_async.core.finetune`, torch-free, and is re-exported here.

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

from torch import nn

from koala_async.core.finetune import SCHEDULES, FineTune
from koala_async.errors import ConfigError
from koala_async.learning.weights import head_prefix

__all__ = ["SCHEDULES", "FineTune", "apply_trainable", "decay_groups", "frozen_norms", "set_train_mode"]


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
