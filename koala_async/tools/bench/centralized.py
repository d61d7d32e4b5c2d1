"""Centralised fine-tuning, the upper bound of a federation: the scenario's large model trained on the
union of its clients' private shards, evaluated on the same held-out test split.

    python -m koala_async.tools.bench.centralized scenarios/finetune.toml --steps 300 \\
        --lrs 3e-4,1e-3,3e-3 --tune-steps 60 [--scratch] [--seed 1] [--json out.json]

The data is derived exactly as the federation derives it (``[federation]`` dataset, seed, alpha,
fractions, number of clients): the private pool is the union of the clients' shards, the test split is
the one the server evaluates on. The model is the server's (``large_model``, ``large_weights`` unless
``--scratch``, ``finetune``, ``device``, ``batch_size``, ``augment``), trained by the server's own
:class:`~koala_async.learning.distill.Distiller` against one-hot labels at temperature 1, which is
cross-entropy.

With several ``--lrs``, the lr is chosen on a VALIDATION split only: a stratified ``--validation``
share of the private pool is held out, each candidate trains ``--tune-steps`` steps on the rest and is
scored on the held-out part; the winner then trains ``--steps`` steps on the whole pool and only then
meets the test split. The test split never takes part in a choice.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from koala_async.learning.data import Dataset, FederatedData
    from koala_async.nodes.config import ServerConfig
    from koala_async.tools.scenario import Scenario


def federation_data(scenario: Scenario) -> FederatedData:
    """The splits and shards every node of ``scenario`` derives."""
    from koala_async.learning.data import federate

    f = scenario.federation
    return federate(f.dataset, f.seed, scenario.num_clients, f.alpha, f.test_fraction, f.proxy_fraction,
                    f.validation_fraction or 0.0)


def holdout(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Stratified (rest, held out): ``fraction`` of each class held out."""
    rng = np.random.default_rng(seed + 7_777)  # not the split's own stream
    keep, out = [], []
    for label in np.unique(data.y):
        idx = rng.permutation(np.flatnonzero(data.y == label))
        n = round(len(idx) * fraction)
        out.append(idx[:n])
        keep.append(idx[n:])
    return data.subset(np.sort(np.concatenate(keep))), data.subset(np.sort(np.concatenate(out)))


def server_config(scenario: Scenario, pretrained: bool = True) -> ServerConfig:
    """The scenario's server config; without its ``large_weights`` unless ``pretrained``."""
    from koala_async.config import load_into
    from koala_async.nodes.config import ServerConfig

    cfg = load_into(ServerConfig, scenario.server_config("mqtt://127.0.0.1:1"), prefix="server")
    return cfg if pretrained else replace(cfg, large_weights=None)


def train_central(cfg: ServerConfig, train: Dataset, evals: dict[str, Dataset], lr: float, steps: int,
                  eval_every: int, seed: int) -> dict[str, Any]:
    """Train the configured large model on ``train`` for ``steps`` steps; score it on ``evals`` every
    ``eval_every`` steps and at the end. Returns the curve and the seconds spent training."""
    from koala_async.learning.distill import Distiller, accuracy
    from koala_async.learning.large_model import build_large

    large = build_large(replace(cfg, seed=seed), train.spec)
    distiller = Distiller(large.model, lr=lr, temperature=1.0, batch_size=cfg.batch_size, seed=seed,
                          augment=cfg.augment, finetune=cfg.finetune, device=large.device)
    onehot = np.eye(train.spec.num_classes, dtype=np.float32)[train.y]
    mask = np.ones(len(train), dtype=bool)
    x = train.x.astype(np.float32)
    curve, spent = [], 0.0
    while distiller.steps_done < steps:
        chunk = min(eval_every, steps - distiller.steps_done)
        started = time.perf_counter()
        loss = distiller.distill(x, onehot, mask, chunk)
        spent += time.perf_counter() - started
        point: dict[str, Any] = {"step": distiller.steps_done, "train_s": round(spent, 1), "loss": round(loss, 4)}
        point.update({name: round(accuracy(distiller.model, d.x, d.y, batch_size=cfg.batch_size), 4)
                      for name, d in evals.items()})
        curve.append(point)
        print(json.dumps({"lr": lr, **point}), flush=True)
    return {"lr": lr, "steps": steps, "train_seconds": round(spent, 1), "curve": curve,
            "large_model": large.name, "weights": large.describe_weights(), "device": str(large.device)}


def choose_lr(cfg: ServerConfig, pool: Dataset, lrs: list[float], tune_steps: int, validation: float,
              seed: int) -> tuple[float, dict[str, float]]:
    """The lr with the best accuracy on a held-out share of ``pool`` (see the module doc)."""
    if len(lrs) == 1:
        return lrs[0], {}
    rest, val = holdout(pool, validation, seed)
    scores = {str(lr): train_central(cfg, rest, {"validation": val}, lr, tune_steps, tune_steps, seed)["curve"][-1]
              ["validation"] for lr in lrs}
    best = max(lrs, key=lambda lr: scores[str(lr)])
    return best, scores


def run(scenario: Scenario, *, pretrained: bool, lrs: list[float], tune_steps: int, steps: int,
        validation: float, eval_every: int, seed: int | None = None) -> dict[str, Any]:
    """Choose the lr on validation, train on the pooled shards, evaluate on the test split."""
    fed = federation_data(scenario)
    seed = scenario.federation.seed if seed is None else seed
    pool = fed.splits.private.subset(np.sort(np.concatenate(fed.shards)))  # the union of the shards
    cfg = server_config(scenario, pretrained)
    started = time.perf_counter()
    best, scores = choose_lr(cfg, pool, lrs, tune_steps, validation, seed)
    result = train_central(cfg, pool, {"test": fed.splits.test}, best, steps, eval_every, seed)
    return {"scenario": scenario.source, "pretrained": pretrained, "seed": seed, "pool": len(pool),
            "test": len(fed.splits.test), "validation_share": validation if len(lrs) > 1 else None,
            "lr_validation_scores": scores, **result, "test_accuracy": result["curve"][-1]["test"],
            "wall_seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    import torch

    from koala_async.tools.scenario import load_scenario

    p = argparse.ArgumentParser(prog="python -m koala_async.tools.bench.centralized", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario")
    p.add_argument("--scratch", action="store_true", help="random initial weights (ignore large_weights)")
    p.add_argument("--lrs", default="", help="comma-separated candidates chosen on validation (default: server.lr)")
    p.add_argument("--tune-steps", type=int, default=60)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--validation", type=float, default=0.2, help="share of the pool held out to choose the lr")
    p.add_argument("--seed", type=int, help="the training seed (default: the federation's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as in koala run")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    scenario = load_scenario(args.scenario, sets=args.set)
    lrs = [float(v) for v in args.lrs.split(",") if v] or [server_config(scenario).lr]
    result = run(scenario, pretrained=not args.scratch, lrs=lrs, tune_steps=args.tune_steps, steps=args.steps,
                 validation=args.validation, eval_every=args.eval_every, seed=args.seed)
    report(result, args.json, omit=("curve",))
    return 0


def report(result: dict[str, Any], path: str | None, omit: tuple[str, ...] = ()) -> None:
    """Print ``result`` as one JSON line (less the ``omit`` keys) and write all of it to ``path``."""
    print(json.dumps({k: v for k, v in result.items() if k not in omit}))
    if path:
        with open(path, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    raise SystemExit(main())
