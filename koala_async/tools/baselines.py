"""Reference numbers computed beside a federation run (in-process, no network): each client's small
model trained on its own shard alone, and each client's final federated small model, both on the
server's held-out test split, which no client ever saw."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _federated(cache: dict[tuple[Any, ...], Any], cfg: Any) -> tuple[Any, Any]:
    """The federation's data for ``cfg`` and the scaling its nodes apply to inputs (vectors standardized
    by the proxy set's statistics; none where clients exchange weights and never see the proxy set),
    both derived once per split."""
    from koala_async.learning import data as datasets
    from koala_async.learning.standardize import Standardizer

    key = (cfg.dataset, cfg.seed, cfg.num_shards, cfg.alpha, cfg.test_fraction, cfg.proxy_fraction,
           cfg.validation_fraction or 0.0)
    if key not in cache:
        fed = datasets.federate(*key)
        cache[key] = (fed, Standardizer.fit(fed.splits.proxy.x))
    fed, scale = cache[key]
    return fed, None if cfg.mode.exchanges_weights else scale


def local_only(server_cfg: dict[str, Any], client_cfgs: list[dict[str, Any]],
               epochs: dict[str, int] | None = None) -> dict[str, float]:
    """Held-out accuracy of each client's small model trained on its own shard alone.

    Same architecture, same optimizer settings, the same training samples (its held-out slice kept
    out, as the federated client keeps it) and the same total number of epochs the federated client
    trained: ``epochs[node_id]`` (what it reported), else ``epochs * max_updates``. No distillation.
    The test split is the server's held-out one.
    """
    import torch

    from koala_async.config import load_into
    from koala_async.core.holdout import holdout_seed, holdout_split
    from koala_async.learning import data as datasets
    from koala_async.learning.distill import LocalTrainer, TrainConfig, accuracy
    from koala_async.learning.models import build_model, client_tiers
    from koala_async.learning.standardize import model_inputs
    from koala_async.nodes.client import ClientConfig

    torch.set_num_threads(1)
    results: dict[str, float] = {}
    cache: dict[tuple[Any, ...], Any] = {}
    for raw in client_cfgs:
        cfg = load_into(ClientConfig, raw)
        fed, scale = _federated(cache, cfg)  # as the federation's nodes see inputs
        shard = datasets.load_npz(cfg.data_path) if cfg.data_path else fed.client(cfg.shard)
        train, _ = holdout_split(len(shard.y), cfg.holdout, holdout_seed(cfg.seed, cfg.shard))
        tier = cfg.tier or client_tiers(shard.spec.kind)[1]
        if tier == "auto":  # the client never reported its choice: fall back to the default tier
            tier = client_tiers(shard.spec.kind)[1]
        t = cfg.train
        total = (epochs or {}).get(cfg.node_id) or t.epochs * max(cfg.max_updates, 1)
        trainer = LocalTrainer(build_model(tier, shard.spec, seed=cfg.seed + cfg.shard),
                               TrainConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr),
                               seed=cfg.seed + cfg.shard)
        trainer.train(model_inputs(shard.x[train], scale), shard.y[train], epochs=total)
        test = fed.splits.test
        results[cfg.node_id] = accuracy(trainer.model, model_inputs(test.x, scale), test.y)
    return results


def small_models(client_cfgs: list[dict[str, Any]]) -> dict[str, float]:
    """Held-out test accuracy of each client's final small model, read from its ``model_out`` file
    (clients without one, or that never trained, are left out)."""
    import torch

    from koala_async.config import load_into
    from koala_async.learning.distill import accuracy
    from koala_async.learning.model_file import load_model
    from koala_async.learning.standardize import model_inputs
    from koala_async.nodes.client import ClientConfig

    torch.set_num_threads(1)
    results: dict[str, float] = {}
    cache: dict[tuple[Any, ...], Any] = {}
    for raw in client_cfgs:
        cfg = load_into(ClientConfig, raw)
        if not cfg.model_out or not Path(cfg.model_out).exists():
            continue
        fed, scale = _federated(cache, cfg)
        test = fed.splits.test
        model, _ = load_model(cfg.model_out, test.spec, allow_imports=True)  # our own run's file
        results[cfg.node_id] = accuracy(model, model_inputs(test.x, scale), test.y)
    return results
