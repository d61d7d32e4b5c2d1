"""Reference numbers computed beside a federation run (in-process, no network)."""

from __future__ import annotations

from typing import Any


def local_only(server_cfg: dict[str, Any], client_cfgs: list[dict[str, Any]]) -> dict[str, float]:
    """Held-out accuracy of each client's small model trained on its own shard alone.

    Same architecture, same optimizer settings and the same total number of epochs the federated client
    runs (``epochs * max_updates``), no distillation. The test split is the server's held-out one.
    """
    import torch

    from koala_async.config import load_into
    from koala_async.learning import data as datasets
    from koala_async.learning.distill import LocalTrainer, TrainConfig, accuracy
    from koala_async.learning.models import build_model, client_tiers
    from koala_async.learning.standardize import Standardizer, model_inputs
    from koala_async.nodes.client import ClientConfig

    torch.set_num_threads(1)
    results: dict[str, float] = {}
    cache: dict[tuple[Any, ...], datasets.FederatedData] = {}
    for raw in client_cfgs:
        cfg = load_into(ClientConfig, raw)
        key = (cfg.dataset, cfg.seed, cfg.num_shards, cfg.alpha, cfg.test_fraction, cfg.proxy_fraction,
               cfg.validation_fraction or 0.0)
        if key not in cache:
            cache[key] = datasets.federate(*key)
        fed = cache[key]
        shard = datasets.load_npz(cfg.data_path) if cfg.data_path else fed.client(cfg.shard)
        tier = cfg.tier or client_tiers(shard.spec.kind)[1]
        if tier == "auto":  # the client never reported its choice: fall back to the default tier
            tier = client_tiers(shard.spec.kind)[1]
        t = cfg.train
        trainer = LocalTrainer(build_model(tier, shard.spec, seed=cfg.seed + cfg.shard),
                               TrainConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr),
                               seed=cfg.seed + cfg.shard)
        # as the federation's nodes see inputs: vectors standardized by the proxy set's statistics
        scale = None if cfg.mode.exchanges_weights else Standardizer.fit(fed.splits.proxy.x)
        trainer.train(model_inputs(shard.x, scale), shard.y, epochs=t.epochs * max(cfg.max_updates, 1))
        test = fed.splits.test
        results[cfg.node_id] = accuracy(trainer.model, model_inputs(test.x, scale), test.y)
    return results
