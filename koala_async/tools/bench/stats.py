"""The figures of ``koala bench``, computed from run reports: pure functions over plain data.

Every figure is a value or ``None`` with a reason; nothing is ever estimated to fill a gap. A mode
row is read from a :func:`koala_async.tools.runner.run_scenario` report; the summary compares rows
and adds the ingest benchmark and the scale run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MODES = ("async", "sync", "fedavg", "fedbuff")
LATENCY_LIMIT_SECONDS = 1.0  # a scale step holds when its p99 arrival-to-fused latency is under this
SUMMARY_KEYS = ("time_to_target_ratio_async_over_sync", "bytes_ratio_async_over_fedavg",
                "accuracy_gap_fedavg_minus_async", "accuracy_gap_fedbuff_minus_async",
                "ingest_ratio_runtime_over_raw", "max_clients",
                "fuse_latency_p99_seconds", "time_to_target_ratio_async_over_sync_from_launch")


def _number(value: Any) -> float | None:
    """``value`` as a finite float, else None (NaN, None, strings, bools)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def time_to_target(timeline: Iterable[Sequence[Any]], target: float | None) -> float | None:
    """Seconds until the first ``[seconds, version, accuracy]`` point at or above ``target`` (None:
    never, or no target)."""
    if target is None:
        return None
    for point in timeline:
        if len(point) < 3:
            continue
        t, acc = _number(point[0]), _number(point[2])
        if t is not None and acc is not None and acc >= target:
            return t
    return None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` when both are finite and the denominator is positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _first(mapping: Mapping[str, Any], *paths: str) -> Any:
    """The first present value among dotted ``paths`` ("bytes.per_update")."""
    for path in paths:
        node: Any = mapping
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            return node
    return None


def _client_mean(clients: Mapping[str, Mapping[str, Any]], *keys: str) -> float | None:
    values = [v for c in clients.values() if (v := _number(_first(c, *keys))) is not None]
    return sum(values) / len(values) if values else None


def _client_max(clients: Mapping[str, Mapping[str, Any]], *keys: str) -> float | None:
    values = [v for c in clients.values() if (v := _number(_first(c, *keys))) is not None]
    return max(values) if values else None


def mode_row(report: Mapping[str, Any]) -> dict[str, Any]:
    """The per-mode figures of one scenario report (``None`` plus a reason where the report lacks one).

    Time to target is filled in later by :func:`apply_target`, once the common target is known.
    """
    reasons: dict[str, str] = {}
    clients: Mapping[str, Mapping[str, Any]] = report.get("clients") or {}
    n_clients = len(clients)
    large = report.get("large_model") or {}
    bytes_ = report.get("bytes") or {}
    updates = report.get("updates") or {}
    wall = _number(report.get("wall_seconds"))
    row: dict[str, Any] = {
        "completed": bool(report.get("completed")),
        "failure": report.get("failure"),
        "final_accuracy": _number(large.get("test_accuracy")),
        "final_validation_accuracy": _number(large.get("validation_accuracy")),
        # Targets are choices: timed on validation where the server has it (the test split is reported).
        "timeline": [list(p) for p in large.get("validation_timeline") or large.get("timeline") or []],
        "target_on": "validation" if large.get("validation_timeline") else "test",
        # the server's latest accuracy sampled every few seconds by the runner, the same for every mode
        "grid": [list(p) for p in large.get("grid") or []],
        # When the server first reported (the federation is up): process start-up before it is the
        # same in every mode and is not what the modes differ in.
        "first_report_at": _number(large.get("first_report_at")),
        "updates_sent": _number(updates.get("sent")),
        "small_models_accuracy": _number((report.get("small_models") or {}).get("mean_test_accuracy")),
        "local_only_accuracy": _number((report.get("local_only") or {}).get("mean_test_accuracy")),
        "fused_staleness_mean": _number((report.get("staleness") or {}).get("fused_mean")),
        "updates_accepted": _number(updates.get("accepted")),
        "wall_seconds": wall,
        "clients": n_clients,
    }
    up, down = _number(bytes_.get("up")), _number(bytes_.get("down"))
    row["bytes_up_per_client"] = up / n_clients if up is not None and n_clients else None
    row["bytes_down_per_client"] = down / n_clients if down is not None and n_clients else None
    per_update = _number(_first(report, "bytes.per_update_mean", "bytes.per_update"))
    if per_update is None:
        per_update = ratio(up, row["updates_sent"])
        if per_update is not None:
            reasons["bytes_per_update"] = "report has no bytes.per_update_mean: client bytes up / updates sent"
    row["bytes_per_update"] = per_update
    row["client_params"] = _client_mean(clients, "params", "model_params", "client_params")
    row["client_train_flops_per_sample"] = _client_mean(clients, "train_flops_per_sample",
                                                        "flops_per_sample")
    row["client_rss_peak_bytes"] = _client_max(clients, "rss_peak_bytes")
    row["accepted_per_second"] = ratio(row["updates_accepted"], wall)
    for key, why in (("final_accuracy", "report has no large-model accuracy"),
                     ("bytes_up_per_client", "report has no client byte counts"),
                     ("bytes_down_per_client", "report has no client byte counts"),
                     ("bytes_per_update", "no updates sent"),
                     ("client_params", "report has no client model params"),
                     ("client_train_flops_per_sample", "report has no client train FLOPs per sample"),
                     ("client_rss_peak_bytes", "report has no client rss_peak_bytes"),
                     ("accepted_per_second", "no accepted count or wall time")):
        if row[key] is None:
            reasons.setdefault(key, why)
    row["reasons"] = reasons
    return row


def auto_target(rows: Mapping[str, Mapping[str, Any] | None], fraction: float = 0.9) -> float | None:
    """``fraction`` of the lowest final accuracy (on validation where reported) among the modes that
    ran: every mode reaches it, so times to it compare."""
    finals = [a for r in rows.values() if r and (a := _number(r.get("final_validation_accuracy"))
                                                 or _number(r.get("final_accuracy"))) is not None]
    return round(fraction * min(finals), 4) if finals else None


def apply_target(row: dict[str, Any], target: float | None) -> None:
    """Fill ``time_to_target_seconds`` (and its reason when missing) in a mode row."""
    if target is None:
        row["time_to_target_seconds"] = None
        row["reasons"]["time_to_target_seconds"] = "no target accuracy"
        return
    # Read from the runner's fixed-cadence grid where the report has one: a mode that publishes more
    # versions would otherwise get more chances to cross the target by noise alone.
    grid = row.get("grid") or []
    reached = time_to_target(grid or row.get("timeline") or [], target)
    row["time_to_target_seconds"] = reached
    row["time_to_target_source"] = "grid" if grid else "versions"
    up = row.get("first_report_at")
    row["time_to_target_from_up_seconds"] = None if reached is None or up is None else round(reached - up, 3)
    if reached is None:
        row["reasons"]["time_to_target_seconds"] = f"never reached accuracy {target:.3f}"
        row["reasons"]["time_to_target_from_up_seconds"] = f"never reached accuracy {target:.3f}"
    elif up is None:
        row["reasons"]["time_to_target_from_up_seconds"] = "report has no large_model.first_report_at"


def step_held(step: Mapping[str, Any], limit: float = LATENCY_LIMIT_SECONDS) -> bool:
    """Whether a scale step's clients all connected, its server accepted updates, and its p99
    arrival-to-fused latency stayed under ``limit`` seconds."""
    p99 = _number((step.get("fuse_latency") or {}).get("p99"))
    accepted = step.get("accepted_in_hold", step.get("accepted"))  # older reports: the hold's count
    return (step.get("connected") == step.get("clients") and (accepted or 0) > 0
            and p99 is not None and p99 < limit)


def max_clients(steps: Sequence[Mapping[str, Any]], limit: float = LATENCY_LIMIT_SECONDS) -> int | None:
    """The client count of the last step of the ramp before the first step that did not hold: a
    larger step that happens to pass after a failed one does not count."""
    best = None
    for step in sorted(steps, key=lambda s: s.get("clients", 0)):
        if not step_held(step, limit):
            break
        best = int(step["clients"])
    return best


def summarize(rows: Mapping[str, Mapping[str, Any] | None], mode_reasons: Mapping[str, str],
              ingest: Mapping[str, Any] | None, scale: Mapping[str, Any] | None
              ) -> tuple[dict[str, float | int | None], dict[str, str]]:
    """The headline figures and, for each one that is None, why."""
    reasons: dict[str, str] = {}

    def field_of(mode: str, key: str) -> float | None:
        row = rows.get(mode)
        if row is None:
            reasons.setdefault(f"{mode}.{key}", mode_reasons.get(mode, f"mode {mode} did not run"))
            return None
        value = _number(row.get(key))
        if value is None:
            reasons.setdefault(f"{mode}.{key}", (row.get("reasons") or {}).get(key, f"{mode} has no {key}"))
        return value

    def explain(name: str, *parts: str) -> None:
        why = "; ".join(reasons[p] for p in parts if p in reasons)
        reasons[name] = why or "not computable"

    out: dict[str, float | int | None] = {}
    # Time to target counts from the moment the federation is up (the server's first report); the
    # ``_from_launch`` figure counts from the runner's start and includes process start-up.
    for name, key in (("time_to_target_ratio_async_over_sync", "time_to_target_from_up_seconds"),
                      ("time_to_target_ratio_async_over_sync_from_launch", "time_to_target_seconds")):
        out[name] = ratio(field_of("async", key), field_of("sync", key))
        if out[name] is None:
            explain(name, f"async.{key}", f"sync.{key}")
    b_async, b_fedavg = field_of("async", "bytes_per_update"), field_of("fedavg", "bytes_per_update")
    out["bytes_ratio_async_over_fedavg"] = ratio(b_async, b_fedavg)
    if out["bytes_ratio_async_over_fedavg"] is None:
        explain("bytes_ratio_async_over_fedavg", "async.bytes_per_update", "fedavg.bytes_per_update")
    a_async = field_of("async", "final_accuracy")
    for other in ("fedavg", "fedbuff"):
        name, a_other = f"accuracy_gap_{other}_minus_async", field_of(other, "final_accuracy")
        out[name] = None if a_async is None or a_other is None else round(a_other - a_async, 4)
        if out[name] is None:
            explain(name, "async.final_accuracy", f"{other}.final_accuracy")
    if ingest is None:
        out["ingest_ratio_runtime_over_raw"] = None
        reasons["ingest_ratio_runtime_over_raw"] = "ingest benchmark did not run"
    else:
        out["ingest_ratio_runtime_over_raw"] = ratio(_number(ingest.get("runtime_rate")),
                                                     _number(ingest.get("raw_best_rate")))
        if out["ingest_ratio_runtime_over_raw"] is None:
            reasons["ingest_ratio_runtime_over_raw"] = ingest.get("error") or "no rates measured"
    steps = (scale or {}).get("steps") or []
    if scale is None or not steps:
        reasons["max_clients"] = reasons["fuse_latency_p99_seconds"] = (
            "scale run did not run" if scale is None else scale.get("error") or "scale run has no steps")
        out["max_clients"] = out["fuse_latency_p99_seconds"] = None
    else:
        out["max_clients"] = max_clients(steps)
        if out["max_clients"] is None:
            reasons["max_clients"] = f"no step held all its clients with p99 < {LATENCY_LIMIT_SECONDS:g} s"
        # The p99 at the heaviest load run: the largest step.
        last = max(steps, key=lambda s: s.get("clients", 0))
        out["fuse_latency_p99_seconds"] = _number((last.get("fuse_latency") or {}).get("p99"))
        if out["fuse_latency_p99_seconds"] is None:
            reasons["fuse_latency_p99_seconds"] = "the largest step fused no update"
    final_reasons = {k: reasons[k] for k in SUMMARY_KEYS if out.get(k) is None and k in reasons}
    return out, final_reasons
