"""Measurements for planning a fine-tuning federation (not collected by pytest; run by hand).

    PYTHONPATH=$PWD python tests/learning/measure_finetune.py steps            # (a) ~2 min
    PYTHONPATH=$PWD python tests/learning/measure_finetune.py finetune 32 150  # (b) side, seconds per run
    PYTHONPATH=$PWD python tests/learning/measure_finetune.py finetune 28 90 0.001 0.003  # lrs given

(a) Seconds per distillation step (batch 64, one thread) of MobileNetV2 and ResNet-18 on 1x28x28
    inputs at input side 28 (no resize), 32 and 64, and seconds to compute logits on 1,000 samples
    (what the server does after each distillation to publish knowledge).
(b) Centralised fine-tuning on mnist5k (stratified split, seed 0: 20% test, 10% validation, the rest
    train) of ImageNet-pretrained MobileNetV2 against the same network from random weights: the lr of
    each is chosen on the validation split only (short runs), then each trains for a fixed wall-clock
    budget (evaluation time excluded) and prints test accuracy against steps.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from koala_async.learning.data import Dataset, load_dataset
from koala_async.learning.distill import Distiller, accuracy, predict_logits
from koala_async.learning.imagenet import imagenet_mobilenet_v2_path
from koala_async.learning.models import InputSpec, build_model
from koala_async.learning.weights import load_weights

SPEC = InputSpec("image", (1, 28, 28), 10)


def step_times() -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    x = rng.random((512, 1, 28, 28), dtype=np.float32)
    targets = rng.dirichlet(np.ones(10), size=512).astype(np.float32)
    mask = np.ones(512, dtype=bool)
    rows = []
    for arch in ("mobilenet_v2", "resnet18"):
        for side in (28, 32, 64):
            name = arch if side == 28 else f"{arch}@{side}"
            distiller = Distiller(build_model(name, SPEC, seed=0), batch_size=64)
            distiller.distill(x, targets, mask, steps=1)  # warm-up
            times = []
            for _ in range(4):
                start = time.perf_counter()
                distiller.distill(x, targets, mask, steps=1)
                times.append(time.perf_counter() - start)
            start = time.perf_counter()
            predict_logits(distiller.model, np.concatenate([x, x]))[:1000]
            infer = (time.perf_counter() - start) * 1000 / 1024
            rows.append({"model": name, "step_s_median": round(float(np.median(times)), 3),
                         "step_s_min": round(min(times), 3), "logits_s_per_1000": round(infer, 2)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def fixed_split(data: Dataset, seed: int = 0) -> tuple[Dataset, Dataset, Dataset]:
    """Stratified train / validation / test: 70% / 10% / 20% of each class."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for label in np.unique(data.y):
        idx = rng.permutation(np.flatnonzero(data.y == label))
        n_test, n_val = round(len(idx) * 0.2), round(len(idx) * 0.1)
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test:n_test + n_val])
        parts[0].append(idx[n_test + n_val:])
    train, val, test = (data.subset(np.sort(np.concatenate(p))) for p in parts)
    return train, val, test


def train(name: str, pretrained: bool, lr: float, train_set: Dataset, evals: list[tuple[str, Dataset]],
          budget_s: float, eval_every: int, seed: int = 0) -> list[dict[str, float]]:
    """AdamW + cross-entropy, batch 64, for ``budget_s`` seconds of training; accuracy every N steps."""
    model = build_model(name, SPEC, seed=seed)
    if pretrained:
        load_weights(model, imagenet_mobilenet_v2_path())
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(train_set.x), torch.from_numpy(train_set.y)
    spent, step, curve = 0.0, 0, []
    while spent < budget_s:
        start = time.perf_counter()
        model.train()
        idx = torch.randint(len(x), (64,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        spent += time.perf_counter() - start
        if step % eval_every == 0 or spent >= budget_s:
            point = {"step": step, "train_s": round(spent, 1), "loss": round(float(loss.detach()), 4)}
            point.update({label: round(accuracy(model, d.x, d.y), 4) for label, d in evals})
            curve.append(point)
            print(json.dumps({"pretrained": pretrained, "lr": lr, **point}), flush=True)
    return curve


def finetune(side: int, budget_s: float, given_lrs: tuple[float, float] | None = None) -> dict[str, object]:
    """``given_lrs`` (pretrained, scratch): skip the validation search and use lrs it chose before."""
    name = "mobilenet_v2" if side == 28 else f"mobilenet_v2@{side}"
    train_set, val, test = fixed_split(load_dataset("mnist5k"))
    print(f"split: train {len(train_set)}, validation {len(val)}, test {len(test)}; model {name}", flush=True)
    out: dict[str, object] = {"model": name, "budget_s": budget_s}
    for pretrained in (True, False):
        scores: dict[float, float] = {}
        for lr in (3e-4, 1e-3, 3e-3) if given_lrs is None else ():  # chosen on validation only
            curve = train(name, pretrained, lr, train_set, [("val", val)], budget_s / 4, eval_every=10**9)
            scores[lr] = curve[-1]["val"]
        best = max(scores, key=lambda k: scores[k]) if given_lrs is None else given_lrs[0 if pretrained else 1]
        curve = train(name, pretrained, best, train_set, [("val", val), ("test", test)], budget_s, eval_every=25)
        out["pretrained" if pretrained else "scratch"] = {"lr_val_scores": scores, "lr": best, "curve": curve}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1:2] == ["steps"]:
        step_times()
    elif sys.argv[1:2] == ["finetune"]:
        lrs = (float(sys.argv[4]), float(sys.argv[5])) if len(sys.argv) > 5 else None
        finetune(int(sys.argv[2]), float(sys.argv[3]), lrs)
    else:
        raise SystemExit(__doc__)
