"""``koala client --dry-run``: what this device would do, without connecting to any broker.

It probes the device (capped to ``profile`` when one is set), loads the configured private data (or,
for an embedded client that starts empty, takes the spec from ``input_shape``/``num_classes`` and
plans for a full buffer of ``max_samples``), measures the tier catalog, and reports the tier the
client would train and why, with predictions:

- **peak memory**: this process's resident memory once torch and the data are loaded (what a client
  holds before its first training) plus the chosen tier's catalog estimate of peak training memory
  (weights, gradients, Adam moments and one batch of activations) plus the sample buffer.
- **epoch time**: catalog training FLOPs per sample x samples per epoch / probed FLOP/s (the probe's
  single-threaded matmul benchmark), times ``slowdown``; and the same for one update (``epochs``).
"""

from __future__ import annotations

import math
from typing import Any

from koala_async.core.resources import MiB
from koala_async.core.tiering import choose_tier, epoch_seconds, samples_per_epoch
from koala_async.errors import DataError
from koala_async.nodes.client import ClientConfig


def _data(config: ClientConfig) -> tuple[Any, int, str]:
    """(input spec, samples a training would use, where they come from)."""
    from koala_async.learning import data as datasets
    from koala_async.learning.models import InputSpec

    if config.data_path:
        data = datasets.load_npz(config.data_path, num_classes=config.num_classes)
        return data.spec, min(len(data), config.max_samples), config.data_path
    if config.dataset not in (None, "", "none"):
        assert config.dataset is not None
        data = datasets.federate(config.dataset, config.seed, config.num_shards, config.alpha,
                                 config.test_fraction, config.proxy_fraction).client(config.shard)
        return (data.spec, min(len(data), config.max_samples),
                f"{config.dataset} shard {config.shard}/{config.num_shards}")
    if config.input_shape is None or config.num_classes is None:
        raise DataError("an empty (embedded) client needs input_shape and num_classes for a dry run")
    shape = tuple(config.input_shape)
    if len(shape) not in (1, 3):
        raise DataError(f"input_shape {shape} must be (D,) or (C, H, W)")
    spec = InputSpec("image" if len(shape) == 3 else "vector", shape, config.num_classes)
    return spec, config.max_samples, f"embedded: planned for a full buffer of {config.max_samples}"


def plan(config: ClientConfig) -> dict[str, Any]:
    """Probe, choose and predict (blocking: loads data and measures the catalog). Never connects."""
    import psutil

    from koala_async.core.resources import get_profile
    from koala_async.io.resources import probe
    from koala_async.learning.catalog import tier_catalog
    from koala_async.learning.models import client_tiers
    from koala_async.nodes.common import limit_threads

    limit_threads(config.threads)
    snap = probe(get_profile(config.profile) if config.profile else None)
    spec, n_samples, source = _data(config)
    catalog = tier_catalog(spec)
    spe = samples_per_epoch(n_samples, config.train.batch_size, config.train.kd_weight > 0)
    if config.tier == "auto":
        choice = choose_tier(snap, catalog, config.tier_policy, spe)
        tier, reason = choice.tier, choice.reason
    else:
        tier = config.tier or client_tiers(spec.kind)[1]
        reason = "configured (tier = \"auto\" chooses from the probe)" if config.tier else "default tier"
    spec_of = {t.name: t for t in catalog}
    chosen = spec_of.get(tier)
    buffer_bytes = config.max_samples * (math.prod(spec.shape) * 4 + 8)
    baseline = psutil.Process().memory_info().rss
    epoch = epoch_seconds(chosen, spe, snap.flops) if chosen else None
    if epoch is not None:
        epoch *= config.slowdown
    rows = [{"tier": t.name, "params": t.params, "peak_train_mib": round(t.peak_train_bytes / MiB, 2),
             "epoch_s": (None if (e := epoch_seconds(t, spe, snap.flops)) is None
                         else round(e * config.slowdown, 4))} for t in catalog]
    return {
        "node_id": config.node_id,
        "probe": snap.summary(),
        "profile": config.profile,
        "data": {"source": source, "input": list(spec.shape), "classes": spec.num_classes,
                 "samples": n_samples, "samples_per_epoch": spe},
        "tier": tier,
        "reason": reason,
        "catalog": rows,
        "predicted": {
            "baseline_rss_mib": round(baseline / MiB, 1),
            "train_mib": None if chosen is None else round(chosen.peak_train_bytes / MiB, 2),
            "buffer_mib": round(buffer_bytes / MiB, 2),
            "peak_rss_mib": round((baseline + (chosen.peak_train_bytes if chosen else 0) + buffer_bytes)
                                  / MiB, 1),
            "epoch_s": None if epoch is None else round(epoch, 4),
            "update_s": None if epoch is None else round(epoch * config.train.epochs, 3),
        },
    }


def render(result: dict[str, Any]) -> str:
    """The plan as plain text, for a terminal or a log."""
    p, d, pred = result["probe"], result["data"], result["predicted"]
    lines = [f"koala client {result['node_id']}: dry run (no broker contacted)",
             "resource probe" + (f" (capped to profile {result['profile']})" if result["profile"] else "") + ":"]
    lines += [f"  {key}: {value}" for key, value in p.items()]
    lines += [(f"data: {d['source']}; input {tuple(d['input'])}, {d['classes']} classes, {d['samples']} samples "
               f"({d['samples_per_epoch']} per epoch with distillation)"),
              "tiers (catalog, measured for this input):"]
    for row in result["catalog"]:
        mark = "*" if row["tier"] == result["tier"] else " "
        epoch = "unknown" if row["epoch_s"] is None else f"{row['epoch_s']:.4f} s"
        lines.append(f" {mark} {row['tier']:<14} {row['params']:>9,} params  peak train "
                     f"{row['peak_train_mib']:>7.2f} MiB  epoch {epoch}")
    epoch = "unknown (no FLOP/s)" if pred["epoch_s"] is None else (
        f"{pred['epoch_s']:.4f} s per epoch, {pred['update_s']:.3f} s per update")
    lines += [f"chosen tier: {result['tier']} ({result['reason']})",
              (f"predicted peak memory: {pred['peak_rss_mib']:.1f} MiB (process now {pred['baseline_rss_mib']:.1f} "
               f"+ training {pred['train_mib']} + sample buffer {pred['buffer_mib']})"),
              f"predicted training time: {epoch}"]
    return "\n".join(lines)
