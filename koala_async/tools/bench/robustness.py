"""How far can poisoned clients steer the large model? An in-process measurement, no MQTT.

The network plays no part in what fusion does with the logits it is given, so this runs the learning
path the server runs, directly: ``digits`` is federated into ``clients`` Dirichlet shards, each client
trains its small model with :class:`LocalTrainer` and computes logits on the proxy set, the first
``adversaries`` clients attack, and the server side fuses everything with :class:`Fusion` and distills
the large model on the proxy set with :class:`Distiller`. Attacks (each a valid message):

- ``permuted``: the class columns of the client's logits permuted (a consistent wrong class mapping).
- ``extreme_logits``: one-hot float16 logits of +-65504 on one wrong class for every sample.
- ``huge_n_samples``: permuted logits claimed with ``n_samples = 2**40`` (the size lie amplifies a
  content lie; alone it would only amplify one honest non-IID client).

Each fusion method runs clean and under each attack, with every client sending its label histogram
and with none sending one. The held-out split, which no client or proxy sample ever sees, is halved
(stratified, by seed) into a *validation* half, on which fusion defaults are chosen (``--set``
overrides a :class:`FusionConfig` field), and a *test* half, which is what is reported. ``target`` is
the argmax accuracy of the fused targets on the proxy set, measured with the proxy labels that nothing
trains on. Numbers are means over ``--seeds``.

``koala robustness [--clients 10] [--adversaries 1] [--seeds 0 1 2] [--methods ...] [--attacks ...]
[--histograms without with] [--set max_certainty=0.4 ...] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from koala_async.core.fusion import METHODS, Fusion, FusionConfig
from koala_async.core.staleness import StalenessPolicy

ATTACKS = ("permuted", "extreme_logits", "huge_n_samples")
SCENARIOS = ("clean", *ATTACKS)
HISTOGRAMS = ("without", "with")


@dataclass(frozen=True)
class Setup:
    clients: int = 10
    adversaries: int = 1
    seeds: tuple[int, ...] = (0, 1, 2)
    alpha: float = 1.0
    client_epochs: int = 30
    distill_steps: int = 400
    dataset: str = "digits"
    methods: tuple[str, ...] = METHODS
    attacks: tuple[str, ...] = ATTACKS
    histograms: tuple[str, ...] = HISTOGRAMS
    fusion: FusionConfig = field(default_factory=FusionConfig)


@dataclass(frozen=True)
class Federation:
    """One seed's trained clients and the splits the server evaluates on."""

    proxy_x: np.ndarray
    proxy_y: np.ndarray  # for measuring fused targets only
    logits: list[np.ndarray]  # per client, (N, C) float16
    counts: list[np.ndarray]  # per client label histogram
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    spec: Any


def halves(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of indices into validation and test halves."""
    rng = np.random.default_rng(seed + 104729)
    val, test = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        val.append(idx[: len(idx) // 2])
        test.append(idx[len(idx) // 2:])
    return np.sort(np.concatenate(val)), np.sort(np.concatenate(test))


def federation(setup: Setup, seed: int) -> Federation:
    from koala_async.learning import data as datasets
    from koala_async.learning.distill import LocalTrainer, TrainConfig, predict_logits
    from koala_async.learning.models import build_model, client_tiers

    fed = datasets.federate(setup.dataset, seed, setup.clients, setup.alpha)
    proxy_x = fed.splits.proxy.x.astype(np.float32)
    logits, counts = [], []
    for k in range(setup.clients):
        shard = fed.client(k)
        tier = client_tiers(shard.spec.kind)[1]
        trainer = LocalTrainer(build_model(tier, shard.spec, seed=seed + k),
                               TrainConfig(epochs=setup.client_epochs), seed=seed + k)
        trainer.train(shard.x, shard.y)
        logits.append(predict_logits(trainer.model, proxy_x).astype(np.float16))
        counts.append(np.bincount(shard.y, minlength=shard.spec.num_classes).astype(np.uint32))
    held = fed.splits.test
    v, t = halves(held.y, seed)
    return Federation(proxy_x, fed.splits.proxy.y, logits, counts, (held.x[v], held.y[v]),
                      (held.x[t], held.y[t]), held.spec)


def poison(logits: np.ndarray, seed: int) -> np.ndarray:
    """A consistent wrong class mapping: column ``c`` carries the score of class ``perm[c]``."""
    c = logits.shape[1]
    rng = np.random.default_rng(seed)
    while True:  # a derangement: no class keeps its own score
        perm = rng.permutation(c)
        if not (perm == np.arange(c)).any():
            return logits[:, perm]


def attack(kind: str, logits: np.ndarray, n_samples: int, seed: int) -> tuple[np.ndarray, int]:
    """What an adversary sends instead of its honest ``(logits, n_samples)``."""
    if kind == "clean":
        return logits, n_samples
    if kind == "permuted":
        return poison(logits, seed), n_samples
    if kind == "extreme_logits":
        target = int(np.random.default_rng(seed).integers(logits.shape[1]))
        out = np.full(logits.shape, -65504.0, dtype=np.float16)  # float16's largest finite magnitude
        out[:, target] = 65504.0
        return out, n_samples
    if kind == "huge_n_samples":
        return poison(logits, seed), 2**40
    raise ValueError(f"attack {kind!r} is not one of {ATTACKS}")


def fuse(setup: Setup, fed: Federation, method: str, scenario: str, histograms: bool,
         seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The fused targets the server would distill: every client at version 0, adversaries first."""
    config = replace(setup.fusion, method=method)
    fusion = Fusion(len(fed.proxy_x), fed.spec.num_classes, config, StalenessPolicy())
    for k, (z, h) in enumerate(zip(fed.logits, fed.counts)):
        n = int(h.sum())
        if k < setup.adversaries:
            z, n = attack(scenario, z, n, seed + k)
        fusion.add(f"client-{k}", "small", 0, z, None, n_samples=n, label_counts=h if histograms else None)
    return fusion.targets(0)


def distilled_accuracy(setup: Setup, fed: Federation, targets: np.ndarray, mask: np.ndarray,
                       seed: int) -> tuple[float, float]:
    """(validation, test) accuracy of the large model distilled on ``targets``."""
    from koala_async.learning.distill import Distiller, accuracy
    from koala_async.learning.models import build_model, default_large

    distiller = Distiller(build_model(default_large(fed.spec.kind), fed.spec, seed=seed), seed=seed)
    distiller.distill(fed.proxy_x, targets, mask, setup.distill_steps)
    return accuracy(distiller.model, *fed.val), accuracy(distiller.model, *fed.test)


def run(setup: Setup) -> dict[str, Any]:
    """``results[method][histograms][scenario] = {"val", "test", "target"}`` (means over seeds)."""
    started = time.perf_counter()
    scenarios = ("clean", *setup.attacks)
    raw: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    for seed in setup.seeds:
        fed = federation(setup, seed)
        for method in setup.methods:
            for hist in setup.histograms:
                for scenario in scenarios:
                    targets, mask = fuse(setup, fed, method, scenario, hist == "with", seed)
                    target_acc = float((targets.argmax(axis=1)[mask] == fed.proxy_y[mask]).mean())
                    val, test = distilled_accuracy(setup, fed, targets, mask, seed)
                    raw.setdefault((method, hist, scenario), []).append((val, test, target_acc))
    results: dict[str, Any] = {}
    for (method, hist, scenario), values in raw.items():
        val, test, target = (round(float(np.mean(col)), 4) for col in zip(*values))
        results.setdefault(method, {}).setdefault(hist, {})[scenario] = {
            "val": val, "test": test, "target": target, "test_per_seed": [round(v[1], 4) for v in values]}
    return {"setup": {**{f.name: getattr(setup, f.name) for f in fields(setup) if f.name != "fusion"},
                      "fusion": setup.fusion.__dict__},
            "results": results, "seconds": round(time.perf_counter() - started, 1)}


def parse_overrides(items: list[str]) -> FusionConfig:
    """``key=value`` pairs over the default :class:`FusionConfig` (values typed like the field)."""
    base = FusionConfig()
    changes: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not hasattr(base, key) or not value:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with a FusionConfig field")
        current = getattr(base, key)
        changes[key] = (value.lower() in ("1", "true", "yes") if isinstance(current, bool)
                        else type(current)(value))
    return replace(base, **changes)


def main(args: argparse.Namespace) -> int:
    from koala_async.nodes.common import limit_threads

    limit_threads(1)
    setup = Setup(clients=args.clients, adversaries=args.adversaries, seeds=tuple(args.seeds),
                  methods=tuple(args.methods), attacks=tuple(args.attacks), histograms=tuple(args.histograms),
                  fusion=parse_overrides(args.set or []))
    out = run(setup)
    print(f"{setup.clients} clients, {setup.adversaries} attacking ({setup.dataset}, seeds {list(setup.seeds)}); "
          f"large-model test accuracy (validation in brackets), mean over seeds:")
    scenarios = ("clean", *setup.attacks)
    print(f"  {'fusion':8} {'labels':8} " + " ".join(f"{s:>22}" for s in scenarios))
    for method, by_hist in out["results"].items():
        for hist, row in by_hist.items():
            cells = " ".join(f"{row[s]['test']:>12.3f} ({row[s]['val']:.3f})" for s in scenarios)
            print(f"  {method:8} {hist:8} {cells}")
    print(f"  ({out['seconds']} s)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=2)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``koala robustness`` flags."""
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--adversaries", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument("--histograms", nargs="+", choices=HISTOGRAMS, default=list(HISTOGRAMS))
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help="override a FusionConfig default (repeatable), e.g. max_certainty=0.4")
    parser.add_argument("--json", help="write the results here")
