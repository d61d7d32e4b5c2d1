"""How far can poisoned clients steer the large model? An in-process measurement, no MQTT.

The network plays no part in what fusion does with the logits it is given, so this runs the learning
path the server runs, directly: ``digits`` is federated into ``clients`` Dirichlet shards, each client
trains its small model with :class:`LocalTrainer` and computes logits on the proxy set, the first
``adversaries`` clients permute the class columns of their logits (a consistent wrong class mapping,
the strongest label-flip a client can send without being non-finite), and the server side fuses them
with :class:`Fusion` (``mean``, ``median``, ``trimmed``, ``filtered``) and distills the large model on the proxy set
with :class:`Distiller`. Each method is also run with every client honest (the clean run). The result
is the large model's accuracy on the held-out test split, which no client or proxy sample ever sees.

``koala robustness [--clients 10] [--adversaries 2] [--seed 0] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from koala_async.core.fusion import Fusion, FusionConfig
from koala_async.core.staleness import StalenessPolicy

METHODS = ("mean", "median", "trimmed", "filtered")


@dataclass(frozen=True)
class Setup:
    clients: int = 10
    adversaries: int = 2
    seed: int = 0
    alpha: float = 1.0
    client_epochs: int = 30
    distill_steps: int = 400
    dataset: str = "digits"


def _client_logits(setup: Setup) -> tuple[Any, list[np.ndarray], list[np.ndarray]]:
    from koala_async.learning import data as datasets
    from koala_async.learning.distill import LocalTrainer, TrainConfig, predict_logits
    from koala_async.learning.models import build_model, client_tiers

    fed = datasets.federate(setup.dataset, setup.seed, setup.clients, setup.alpha)
    proxy_x = fed.splits.proxy.x.astype(np.float32)
    logits, counts = [], []
    for k in range(setup.clients):
        shard = fed.client(k)
        tier = client_tiers(shard.spec.kind)[1]
        trainer = LocalTrainer(build_model(tier, shard.spec, seed=setup.seed + k),
                               TrainConfig(epochs=setup.client_epochs), seed=setup.seed + k)
        trainer.train(shard.x, shard.y)
        logits.append(predict_logits(trainer.model, proxy_x).astype(np.float16))
        counts.append(np.bincount(shard.y, minlength=shard.spec.num_classes).astype(np.uint32))
    return fed, logits, counts


def poison(logits: np.ndarray, seed: int) -> np.ndarray:
    """A consistent wrong class mapping: column ``c`` carries the score of class ``perm[c]``."""
    c = logits.shape[1]
    rng = np.random.default_rng(seed)
    while True:  # a derangement: no class keeps its own score
        perm = rng.permutation(c)
        if not (perm == np.arange(c)).any():
            return logits[:, perm]


def large_accuracy(setup: Setup, fed: Any, logits: list[np.ndarray], counts: list[np.ndarray],
                   method: str) -> float:
    from koala_async.learning.distill import Distiller, accuracy
    from koala_async.learning.models import build_model, default_large

    proxy_x = fed.splits.proxy.x.astype(np.float32)
    spec = fed.splits.test.spec
    policy = StalenessPolicy()
    fusion = Fusion(len(proxy_x), spec.num_classes, FusionConfig(method=method), policy)
    for k, (z, h) in enumerate(zip(logits, counts)):
        fusion.add(f"client-{k}", "small", 0, z, None, fusion.arrival_weight(0, int(h.sum())), h)
    targets, mask = fusion.targets(0)
    distiller = Distiller(build_model(default_large(spec.kind), spec, seed=setup.seed), seed=setup.seed)
    distiller.distill(proxy_x, targets, mask, setup.distill_steps)
    return accuracy(distiller.model, fed.splits.test.x, fed.splits.test.y)


def run(setup: Setup) -> dict[str, Any]:
    started = time.perf_counter()
    fed, clean, counts = _client_logits(setup)
    attacked = [poison(z, setup.seed + k) if k < setup.adversaries else z for k, z in enumerate(clean)]
    results: dict[str, Any] = {"setup": setup.__dict__, "clean": {}, "attacked": {}}
    for method in METHODS:
        results["clean"][method] = round(large_accuracy(setup, fed, clean, counts, method), 4)
        results["attacked"][method] = round(large_accuracy(setup, fed, attacked, counts, method), 4)
    results["drop_points"] = {m: round(100 * (results["clean"]["mean"] - results["attacked"][m]), 2)
                              for m in METHODS}
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def main(args: argparse.Namespace) -> int:
    from koala_async.nodes.common import limit_threads

    limit_threads(1)
    setup = Setup(clients=args.clients, adversaries=args.adversaries, seed=args.seed)
    results = run(setup)
    print(f"{setup.clients} clients, {setup.adversaries} sending permuted-class logits "
          f"({setup.dataset}, seed {setup.seed}); large-model test accuracy:")
    print(f"  {'fusion':8} {'clean':>7} {'attacked':>9} {'drop vs clean mean (points)':>28}")
    for m in METHODS:
        print(f"  {m:8} {results['clean'][m]:7.3f} {results['attacked'][m]:9.3f} "
              f"{results['drop_points'][m]:28.1f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0
