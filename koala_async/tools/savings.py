"""What a client saves by training its small model instead of the large one (as FedAvg clients do):
storage and training FLOPs of every tier a run used, against the run's large model.

:func:`measure_run_models` runs in the scenario runner before any node starts. It measures the large
model and every tier the clients may train (the built-in ladder of the data's kind, which clients
measure to choose from, plus any configured tier, import strings included) with
:func:`~koala_async.learning.catalog.measure_many`. That also warms the FLOPs cache on disk
(:mod:`koala_async.learning.flops`), so eight clients starting together find their counts there
instead of each paying for torch's compiler stack. :func:`savings` then puts the ratios in the report.

Storage is the model's ``state_dict`` as ``torch.save`` writes it (``bytes_on_disk``); FLOPs are one
forward and backward pass per sample, counted by ``FlopCounterMode``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from koala_async.core.tiering import TierSpec

log = logging.getLogger(__name__)


def _names(server_cfg: dict[str, Any], client_cfgs: Iterable[dict[str, Any]], kind: str) -> tuple[str, list[str]]:
    from koala_async.learning.models import client_tiers, default_large

    large = server_cfg.get("large_model") or default_large(kind)
    tiers = list(client_tiers(kind))
    for cfg in client_cfgs:
        tier = cfg.get("tier")
        if tier and tier != "auto" and tier not in tiers:
            tiers.append(tier)
    return large, tiers


def measure_run_models(server_cfg: dict[str, Any], client_cfgs: list[dict[str, Any]]) -> dict[str, TierSpec]:
    """Measure the run's large model and candidate tiers for the server's data (blocking; a few
    seconds, most of it counting FLOPs in a child process the first time). Returns {} and logs when the
    data cannot be loaded here: the run goes on, the report just has no savings."""
    from koala_async.learning.catalog import measure_many
    from koala_async.learning.data import load_dataset

    try:
        spec = load_dataset(server_cfg.get("dataset", "digits")).spec
        large, tiers = _names(server_cfg, client_cfgs, spec.kind)
        measured = measure_many([large, *[t for t in tiers if t != large]], spec)
    except Exception as exc:  # noqa: BLE001 - a report extra; never the reason a run fails
        log.warning("tier savings not measured: %s: %s", type(exc).__name__, exc)
        return {}
    return {t.name: t for t in measured}


def _row(t: TierSpec, large: TierSpec) -> dict[str, Any]:
    return {"params": t.params, "bytes_on_disk": t.bytes_on_disk, "train_flops_per_sample": t.train_flops_per_sample,
            "storage_reduction": round(1 - t.bytes_on_disk / large.bytes_on_disk, 5),
            "params_reduction": round(1 - t.params / large.params, 5),
            "flops_reduction": round(1 - t.train_flops_per_sample / large.train_flops_per_sample, 5)}


def savings(measured: dict[str, TierSpec], large_name: str | None, used: Iterable[str | None]) -> dict[str, Any] | None:
    """The report's ``savings``: the large model, then each tier clients trained with its reductions
    (``1 - tier / large``) in storage, parameters and training FLOPs per sample; the ``min_*`` fields
    are the smallest reduction over the tiers used (None when nothing was measured)."""
    large = measured.get(large_name or "")
    if large is None:
        return None
    rows = {name: _row(measured[name], large) for name in sorted({u for u in used if u}) if name in measured}
    out: dict[str, Any] = {"large_model": {"name": large.name, **_row(large, large)}, "tiers": rows}
    if rows:
        for key in ("storage_reduction", "params_reduction", "flops_reduction"):
            out[f"min_{key}"] = min(r[key] for r in rows.values())
    return out
