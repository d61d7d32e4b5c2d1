"""``koala bench`` over several seeds: every figure as a mean with its spread. Pure functions.

One run of one mode is noisy (which client was scheduled first, which version happened to cross the
target), so the bench runs every mode once per seed (the federation's seed: data split, shards and
model initialisation) and reports each figure's mean, min, max and standard deviation over the seeds.
Ratios and gaps between modes are taken per seed first (async and sync of the same seed share data
and initial models), then summarised the same way.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

# Per-mode figures aggregated over seeds (those a mode row holds as numbers).
FIGURES = ("time_to_target_seconds", "time_to_target_from_up_seconds", "final_accuracy", "first_report_at",
           "bytes_up_per_client", "bytes_down_per_client", "bytes_per_update", "client_params",
           "client_train_flops_per_sample", "client_rss_peak_bytes", "updates_sent", "updates_accepted",
           "accepted_per_second", "wall_seconds", "small_models_accuracy", "local_only_accuracy",
           "fused_staleness_mean")

# Cross-mode figures computed per seed: name -> (numerator mode, denominator mode, row key, kind).
PAIRED = {
    "time_to_target_ratio_async_over_sync": ("async", "sync", "time_to_target_from_up_seconds", "ratio"),
    "time_to_target_ratio_async_over_sync_from_launch": ("async", "sync", "time_to_target_seconds", "ratio"),
    "accuracy_gap_fedavg_minus_async": ("fedavg", "async", "final_accuracy", "gap"),
    "accuracy_gap_fedbuff_minus_async": ("fedbuff", "async", "final_accuracy", "gap"),
}


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def spread(values: Sequence[Any]) -> dict[str, Any]:
    """Mean, min, max and sample standard deviation of the finite ``values`` (``n`` of them; the
    rest, a mode that never reached its target for instance, are counted in ``missing``)."""
    finite = [v for v in map(_finite, values) if v is not None]
    out: dict[str, Any] = {"n": len(finite), "missing": len(values) - len(finite),
                           "values": [_finite(v) for v in values]}
    if not finite:
        return {**out, "mean": None, "min": None, "max": None, "std": None}
    return {**out, "mean": statistics.fmean(finite), "min": min(finite), "max": max(finite),
            "std": statistics.stdev(finite) if len(finite) > 1 else 0.0}


def combine(rows: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """One mode's rows, one per seed, as one row: each figure the mean over the seeds (None when no
    seed has it: then every seed's reason is kept), its spread under ``spread``, the rows under
    ``per_seed``. A figure missing in only some seeds is the mean of the others, and says so."""
    if not rows:
        raise ValueError("no rows to combine")
    first = rows[0]
    out: dict[str, Any] = {k: v for k, v in first.items() if k not in FIGURES and k != "reasons"}
    out["completed"] = all(r.get("completed") for r in rows)
    out["failure"] = next((r.get("failure") for r in rows if r.get("failure")), None)
    out["seeds"] = list(seeds)
    out["grids"] = [r.get("grid") or [] for r in rows]
    out["spread"], reasons = {}, {}
    for key in FIGURES:
        s = spread([r.get(key) for r in rows])
        out["spread"][key] = s
        out[key] = s["mean"]
        why = [f"seed {seed}: {r['reasons'][key]}" for seed, r in zip(seeds, rows, strict=True)
               if _finite(r.get(key)) is None and key in (r.get("reasons") or {})]
        if why and s["mean"] is None:
            reasons[key] = "; ".join(why)
        elif why:
            reasons[key] = f"mean of {s['n']} of {len(rows)} seeds; " + "; ".join(why)
    out["reasons"] = reasons
    out["per_seed"] = [dict(r) for r in rows]
    return out


def paired(per_seed: Mapping[int, Mapping[str, Mapping[str, Any] | None]]) -> dict[str, dict[str, Any]]:
    """Each cross-mode figure of :data:`PAIRED`, computed within each seed, then spread over seeds."""
    out: dict[str, dict[str, Any]] = {}
    for name, (num, den, key, kind) in PAIRED.items():
        values: list[float | None] = []
        for rows in per_seed.values():
            a = _finite((rows.get(num) or {}).get(key))
            b = _finite((rows.get(den) or {}).get(key))
            if a is None or b is None or (kind == "ratio" and b <= 0):
                values.append(None)
            else:
                values.append(a / b if kind == "ratio" else round(a - b, 4))
        out[name] = {**spread(values), "seeds": list(per_seed)}
    return out
