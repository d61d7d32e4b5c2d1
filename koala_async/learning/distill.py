"""Training and distillation loops, both directions of KOALA.

- Forward (client): cross-entropy on private data plus ``kd_weight * T^2 * KL(teacher || student)`` on
  proxy inputs against the server's knowledge (Hinton et al.'s distillation loss; T is the server's
  temperature, carried in its knowledge: one temperature per federation).
- Reverse (server): the large model is trained on proxy inputs against the fused client targets with
  the same tempered KL, only on proxy samples that have a target.

These functions block; nodes call them through ``asyncio.to_thread``. The server's side
(:class:`Distiller`, :func:`predict_logits`, :func:`accuracy`) runs on any torch device (see
:mod:`koala_async.learning.device`): the model moves once, each batch moves per step, results come back
as numpy arrays on the CPU. Inputs may be float32 or uint8 pixels (0-255, scaled to [0, 1] here); proxy
inputs are converted one minibatch at a time, so a 150 MB uint8 proxy set never becomes 600 MB of float32.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from koala_async.learning.adam import Adam, AdamW
from koala_async.learning.device import model_device, resolve_device
from koala_async.learning.finetune import (
    FineTune,
    apply_trainable,
    decay_groups,
    frozen_norms,
    set_train_mode,
)


def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Tempered KL(teacher || student), scaled by T^2 so gradients keep their size across T."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_p, teacher_probs, reduction="batchmean") * temperature**2


def _tensor(x: np.ndarray) -> torch.Tensor:
    """float32 tensor of ``x``; uint8 pixels (0-255) become [0, 1], the scale float images are kept at."""
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 512,
                   device: torch.device | str | None = None) -> np.ndarray:
    """The model's logits on ``x`` (eval mode), as float32 numpy on the CPU.

    Runs where the model's parameters are, unless ``device`` says where to move the model first."""
    if device is not None:
        model.to(resolve_device(device))
    where = model_device(model)
    model.eval()
    out = [model(_tensor(x[i:i + batch_size]).to(where)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device | str | None = None,
             batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` (NaN for no samples)."""
    if len(y) == 0:
        return float("nan")
    return float((predict_logits(model, x, batch_size, device=device).argmax(axis=1) == y).mean())


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 3e-3
    temperature: float = 3.0
    kd_weight: float = 1.0


class LocalTrainer:
    """A client's small model and optimizer, trained a few epochs at a time."""

    def __init__(self, model: nn.Module, config: TrainConfig, seed: int = 0) -> None:
        self.model = model
        self.config = config
        # Our own Adam, not torch.optim's: that one pulls torch's compiler stack into a client's memory.
        self.optimizer = Adam(model.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.epochs_done = 0

    def train(self, x: np.ndarray, y: np.ndarray, proxy_x: np.ndarray | None = None,
              teacher_logits: np.ndarray | None = None, epochs: int | None = None,
              stop: threading.Event | None = None, temperature: float | None = None) -> float:
        """Train on private ``(x, y)``, distilling ``teacher_logits`` on ``proxy_x`` when given, at
        ``temperature`` (the server's, from its knowledge; default the config's).

        Returns the mean loss of the last epoch. Setting ``stop`` (from another thread) ends the
        training after the current minibatch, so a node shutting down need not wait for all epochs.
        """
        cfg = self.config
        t = cfg.temperature if temperature is None else temperature
        xt, yt = _tensor(x), torch.from_numpy(y.astype(np.int64))
        kd_x = proxy_x if teacher_logits is not None and cfg.kd_weight > 0 else None
        if kd_x is not None:
            assert teacher_logits is not None  # for mypy: kd_x says so
            teacher = F.softmax(_tensor(teacher_logits) / t, dim=1)
        self.model.train()
        last = 0.0
        for _ in range(epochs or cfg.epochs):
            order = torch.randperm(len(xt), generator=self.generator)
            total, batches = 0.0, 0
            for start in range(0, len(xt), cfg.batch_size):
                if stop is not None and stop.is_set():
                    return total / max(batches, 1)
                idx = order[start:start + cfg.batch_size]
                loss = F.cross_entropy(self.model(xt[idx]), yt[idx])
                if kd_x is not None:
                    pidx = torch.randint(len(kd_x), (max(len(idx), cfg.batch_size),), generator=self.generator)
                    px = _tensor(kd_x[pidx.numpy()])  # this minibatch only: the proxy set stays as it is
                    loss = loss + cfg.kd_weight * kd_loss(self.model(px), teacher[pidx], t)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                total += float(loss.detach())
                batches += 1
            last = total / max(batches, 1)
            self.epochs_done += 1
        return last


AUGMENTATIONS = ("none", "shift")


def random_shift(x: torch.Tensor, generator: torch.Generator, pad: int = 1) -> torch.Tensor:
    """Translate each image of ``x`` (B, C, H, W) by up to ``pad`` pixels each way, zero-filled.

    A label-preserving augmentation: the proxy set is small (a few hundred samples on digits), and a
    large student fitting fixed soft targets on exactly those inputs memorises them; seeing each proxy
    input slightly moved makes it learn the teachers' function rather than the points.
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    span = 2 * pad + 1
    offsets = torch.randint(0, span * span, (b,), generator=generator)
    out = torch.empty_like(x)
    for k in range(span * span):  # one slice per distinct offset, not one per image
        rows = (offsets == k).nonzero(as_tuple=True)[0]
        if len(rows):
            dy, dx = divmod(k, span)
            out[rows] = padded[rows, :, dy:dy + h, dx:dx + w]
    return out


class Distiller:
    """The server's large model, distilled on proxy inputs against fused soft targets.

    ``augment="shift"`` moves image inputs by up to a pixel at each step (see :func:`random_shift`);
    vector inputs are never augmented. ``finetune`` says which parameters train, the weight decay and
    the lr schedule (:class:`~koala_async.learning.finetune.FineTune`; the default trains everything
    at a constant lr, as before). ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``, a ``torch.device``)
    is where the model moves once, here; sampling stays on the CPU so runs repeat across devices.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, temperature: float = 3.0,
                 batch_size: int = 64, seed: int = 0, augment: str = "none",
                 finetune: FineTune | None = None, device: torch.device | str = "cpu") -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment {augment!r} is not one of {AUGMENTATIONS}")
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.temperature = temperature
        self.batch_size = batch_size
        self.augment = augment
        self.finetune = finetune or FineTune()
        self.lr = lr
        self.trainable = apply_trainable(model, self.finetune.train)
        self._frozen_norms = frozen_norms(model)
        # AdamW with no decay is Adam, step for step; ours, not torch.optim's (see learning/adam.py)
        self.optimizer = AdamW(decay_groups(model, self.finetune.weight_decay), lr=lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.steps_done = 0

    def current_lr(self) -> float:
        """The lr the next step will use (the schedule's value at ``steps_done``)."""
        return self.lr * self.finetune.lr_factor(self.steps_done)

    def distill(self, proxy_x: np.ndarray, targets: np.ndarray, mask: np.ndarray, steps: int,
                max_seconds: float | None = None, stop: threading.Event | None = None) -> float:
        """``steps`` minibatch steps of tempered KL on the masked proxy samples; returns mean loss.

        With ``max_seconds``, stops early once that much time has passed (at least one step runs);
        setting ``stop`` (from another thread) ends it after the current step. ``steps_done`` says how
        many ran.
        """
        idx_all = torch.from_numpy(np.flatnonzero(mask))
        if len(idx_all) == 0 or steps <= 0:
            return float("nan")
        tgt = _tensor(targets)
        set_train_mode(self.model, self._frozen_norms)
        total = 0.0
        deadline = None if max_seconds is None else time.perf_counter() + max_seconds
        done = 0
        for _ in range(steps):
            if deadline is not None and done and time.perf_counter() >= deadline:
                break
            if stop is not None and stop.is_set():
                break
            pick = idx_all[torch.randint(len(idx_all), (min(self.batch_size, len(idx_all)),),
                                         generator=self.generator)]
            inputs = _tensor(proxy_x[pick.numpy()])  # one minibatch: uint8 pixels become float here
            if self.augment == "shift" and inputs.ndim == 4:
                inputs = random_shift(inputs, self.generator)
            loss = kd_loss(self.model(inputs.to(self.device)), tgt[pick].to(self.device), self.temperature)
            for group in self.optimizer.param_groups:
                group["lr"] = self.current_lr()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach())
            self.steps_done += 1
            done += 1
        return total / done if done else float("nan")
