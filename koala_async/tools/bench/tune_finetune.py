"""Choose a fine-tuning scenario's learning rates on a VALIDATION split, never on the test split.

    python -m koala_async.tools.bench.tune_finetune scenarios/finetune.toml --json tune.json \\
        [--client-lrs 1e-3,3e-3,1e-2] [--server-lrs 3e-4,1e-3,3e-3] [--server-steps 80] \\
        [--fedavg-lrs 3e-4,1e-3,3e-3] [--fedavg-rounds 2] [--skip fedavg]

A stratified ``--validation`` share of the federation's private pool is held out (the clients' pool,
which a tuning experimenter may label; the test split is not touched), the rest is Dirichlet-partitioned
among the scenario's clients as the run partitions the whole pool, and each part of the federation is
tuned in process, one-shot, with the scenario's own models and settings:

1. client lr: each client trains its tier on its shard alone for ``epochs x max_updates`` epochs (what
   a client trains over a run, without the server's knowledge); mean validation accuracy;
2. server lr (KOALA), from the pretrained weights and from scratch: the clients trained with the chosen
   lr publish logits on the proxy set, fused by the server's own ``Fusion`` (the scenario's fusion
   settings, the clients' label counts), and the large model is distilled on them for
   ``--server-steps`` steps;
3. FedAvg client lr: ``--fedavg-rounds`` rounds of FedAvg of the large model from the pretrained
   weights (``fedavg_epochs`` local epochs each, the clients' Adam), averaged by sample count.

This is a cheaper stand-in for full federation runs (one fusion instead of many, no staleness), used to
rank candidates; the budgets (steps, updates, rounds) are set by what fits the time limit.

``--dev-npz PATH`` instead writes the scenario's data without its test split (private pool and proxy
set, with labels) as an ``.npz``: a whole federation can then be rehearsed on validation, e.g.
``koala run scenarios/finetune.toml --set 'federation.dataset="npz:PATH"'``, whose own held-out split is
carved from that file and never from the real test split.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from koala_async.tools.bench.centralized import federation_data, holdout, report, server_config

if TYPE_CHECKING:
    from koala_async.learning.data import Dataset
    from koala_async.nodes.config import ClientConfig, ServerConfig


def _log(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _client_config(scenario: Any) -> ClientConfig:
    from koala_async.config import load_into
    from koala_async.nodes.config import ClientConfig

    return load_into(ClientConfig, scenario.client_configs("mqtt://127.0.0.1:1")[0])


def _train_clients(shards: list[Dataset], tier: str, lr: float, epochs: int, batch: int, seed: int) -> list[Any]:
    from koala_async.learning.distill import LocalTrainer, TrainConfig
    from koala_async.learning.models import build_model

    models = []
    for k, shard in enumerate(shards):
        trainer = LocalTrainer(build_model(tier, shard.spec, seed=seed + k),
                               TrainConfig(epochs=epochs, batch_size=batch, lr=lr, kd_weight=0.0), seed=seed + k)
        trainer.train(shard.x, shard.y)
        models.append(trainer.model)
    return models


def fused_targets(models: list[Any], shards: list[Dataset], proxy_x: np.ndarray, cfg: ServerConfig) -> np.ndarray:
    """The server's fused targets after one update from every client: its own
    :class:`~koala_async.core.fusion.Fusion` with the scenario's fusion and staleness settings (label
    counts included, as clients send them), all updates built on version 0."""
    from koala_async.core.fusion import Fusion
    from koala_async.learning.distill import predict_logits

    classes = shards[0].spec.num_classes
    fusion = Fusion(len(proxy_x), classes, cfg.fusion, cfg.staleness)
    for k, (model, shard) in enumerate(zip(models, shards)):
        logits = predict_logits(model, proxy_x).astype(np.float16)
        counts = np.bincount(shard.y, minlength=classes).astype(np.uint32)
        fusion.add(f"c{k}", "tier", 0, logits, None, n_samples=len(shard), label_counts=counts)
    targets, mask = fusion.targets(0)
    assert mask.all()
    return targets.astype(np.float32)


def distill_score(cfg: ServerConfig, proxy_x: np.ndarray, targets: np.ndarray, val: Dataset, lr: float,
                  steps: int, seed: int) -> float:
    from koala_async.learning.distill import Distiller, accuracy
    from koala_async.learning.large_model import build_large

    large = build_large(replace(cfg, seed=seed), val.spec)
    d = Distiller(large.model, lr=lr, temperature=cfg.temperature, batch_size=cfg.batch_size, seed=seed,
                  augment=cfg.augment, finetune=cfg.finetune, device=large.device)
    d.distill(proxy_x, targets, np.ones(len(proxy_x), dtype=bool), steps)
    return accuracy(d.model, val.x, val.y, batch_size=cfg.batch_size)


def fedavg_score(cfg: ServerConfig, client: ClientConfig, shards: list[Dataset], val: Dataset, lr: float,
                 rounds: int, seed: int) -> list[float]:
    import torch

    from koala_async.core.weights import weighted_average
    from koala_async.learning.distill import LocalTrainer, TrainConfig, accuracy
    from koala_async.learning.large_model import build_large

    model = build_large(replace(cfg, seed=seed), val.spec).model
    t = client.train
    scores = []
    for r in range(rounds):
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        results = []
        for k, shard in enumerate(shards):
            model.load_state_dict(start)
            LocalTrainer(model, TrainConfig(epochs=t.fedavg_epochs or t.epochs, batch_size=t.batch_size, lr=lr,
                                            kd_weight=0.0), seed=seed + k + 7919 * r).train(shard.x, shard.y)
            results.append(({n: v.detach().numpy().astype(np.float32, copy=True)
                             for n, v in model.state_dict().items()}, float(len(shard))))
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weighted_average(results).items()})
        scores.append(accuracy(model, val.x, val.y, batch_size=cfg.batch_size))
        _log(part="fedavg", lr=lr, round=r + 1, validation=round(scores[-1], 4))
    return scores


def tune(scenario: Any, client_lrs: list[float], server_lrs: list[float], server_steps: int,
         fedavg_lrs: list[float], fedavg_rounds: int, validation: float, skip: set[str]) -> dict[str, Any]:
    from koala_async.learning.data import dirichlet_partition

    f = scenario.federation
    fed = federation_data(scenario)
    rest, val = holdout(fed.splits.private, validation, f.seed)
    shards = [rest.subset(idx) for idx in dirichlet_partition(rest.y, scenario.num_clients, f.alpha, f.seed)]
    client, cfg = _client_config(scenario), server_config(scenario)
    tier = client.tier or "image-small"
    epochs = client.train.epochs * max(client.max_updates, 1)
    out: dict[str, Any] = {"scenario": scenario.source, "validation": len(val), "tuning_pool": len(rest),
                           "shard_sizes": [len(s) for s in shards], "tier": tier, "client_epochs": epochs}
    started = time.perf_counter()
    from koala_async.learning.distill import accuracy

    client_scores = {}
    for lr in client_lrs:
        models = _train_clients(shards, tier, lr, epochs, client.train.batch_size, f.seed)
        client_scores[str(lr)] = float(np.mean([accuracy(m, val.x, val.y) for m in models]))
        _log(part="client", lr=lr, mean_validation=round(client_scores[str(lr)], 4))
    client_lr = max(client_lrs, key=lambda lr: client_scores[str(lr)])
    out["client"] = {"scores": client_scores, "lr": client_lr}
    models = _train_clients(shards, tier, client_lr, epochs, client.train.batch_size, f.seed)
    proxy_x = fed.splits.proxy.x.astype(np.float32)
    targets = fused_targets(models, shards, proxy_x, cfg)
    for init in ("pretrained", "scratch"):
        if init in skip:
            continue
        init_cfg = server_config(scenario, pretrained=init == "pretrained")
        scores = {}
        for lr in server_lrs:
            scores[str(lr)] = distill_score(init_cfg, proxy_x, targets, val, lr, server_steps, f.seed)
            _log(part=f"server-{init}", lr=lr, steps=server_steps, validation=round(scores[str(lr)], 4))
        out[f"server_{init}"] = {"scores": scores, "lr": max(server_lrs, key=lambda lr: scores[str(lr)]),
                                 "steps": server_steps}
    if "fedavg" not in skip:
        curves = {str(lr): fedavg_score(cfg, client, shards, val, lr, fedavg_rounds, f.seed) for lr in fedavg_lrs}
        out["fedavg"] = {"curves": curves, "lr": max(fedavg_lrs, key=lambda lr: curves[str(lr)][-1]),
                         "rounds": fedavg_rounds}
    out["wall_seconds"] = round(time.perf_counter() - started, 1)
    return out


def write_dev_npz(scenario: Any, path: str) -> int:
    """Write the scenario's private pool and proxy set (not its test split), labelled, to ``path``."""
    splits = federation_data(scenario).splits
    x = np.concatenate([splits.private.x, splits.proxy.x])
    y = np.concatenate([splits.private.y, splits.proxy.y])
    np.savez_compressed(path, x=x, y=y)
    return len(y)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    import torch

    from koala_async.tools.scenario import load_scenario

    p = argparse.ArgumentParser(prog="python -m koala_async.tools.bench.tune_finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario")
    p.add_argument("--client-lrs", default="1e-3,3e-3,1e-2")
    p.add_argument("--server-lrs", default="3e-4,1e-3,3e-3")
    p.add_argument("--server-steps", type=int, default=80)
    p.add_argument("--fedavg-lrs", default="3e-4,1e-3,3e-3")
    p.add_argument("--fedavg-rounds", type=int, default=2)
    p.add_argument("--validation", type=float, default=0.2)
    p.add_argument("--skip", default="", help="comma-separated: pretrained, scratch, fedavg")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as in koala run")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--dev-npz", help="only write the data without its test split here (see the module doc)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.dev_npz:
        write_dev_npz(load_scenario(args.scenario, sets=args.set), args.dev_npz)
        return 0
    result = tune(load_scenario(args.scenario, sets=args.set), _floats(args.client_lrs), _floats(args.server_lrs),
                  args.server_steps, _floats(args.fedavg_lrs), args.fedavg_rounds, args.validation,
                  set(filter(None, args.skip.split(","))))
    report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
