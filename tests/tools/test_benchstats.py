"""The pure figures of ``koala bench``: time to target, ratios, mode rows and the summary."""

from __future__ import annotations

import math

from koala_async.tools.bench.stats import (
    SUMMARY_KEYS,
    apply_target,
    auto_target,
    max_clients,
    mode_row,
    ratio,
    summarize,
    time_to_target,
)


def report(accuracy: float = 0.8, timeline=None, up: int = 4000, sent: int = 4, clients: int = 2,
           up_at: float = 1.0, **extra):
    return {"completed": True, "wall_seconds": 20.0,
            "large_model": {"test_accuracy": accuracy, "first_report_at": up_at,
                            "timeline": timeline if timeline is not None else [[0.0, 0, 0.1], [5.0, 1, accuracy]]},
            "bytes": {"up": up, "down": 10_000}, "updates": {"sent": sent, "accepted": sent},
            "clients": {f"c{i}": {"tier": "image-small", "bytes_up": up // clients} for i in range(clients)},
            **extra}


def test_time_to_target_is_the_first_point_at_or_above_it() -> None:
    timeline = [[0.0, 0, 0.1], [3.0, 1, float("nan")], [4.5, 2, 0.5], [6.0, 3, 0.45], [9.0, 4, 0.7]]
    assert time_to_target(timeline, 0.5) == 4.5
    assert time_to_target(timeline, 0.6) == 9.0
    assert time_to_target(timeline, 0.9) is None
    assert time_to_target([], 0.1) is None


def test_ratio_refuses_missing_or_non_positive_denominators() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(1.0, 0.0) is None
    assert ratio(1.0, None) is None


def test_mode_row_reads_the_report_and_explains_what_is_missing() -> None:
    row = mode_row(report(accuracy=0.75, up=8000, sent=4))
    assert row["final_accuracy"] == 0.75
    assert row["bytes_up_per_client"] == 4000
    assert row["bytes_per_update"] == 2000  # fallback: bytes up / updates sent, with its reason
    assert "bytes_per_update" in row["reasons"]
    assert row["client_rss_peak_bytes"] is None and "rss_peak_bytes" in row["reasons"]["client_rss_peak_bytes"]
    assert row["accepted_per_second"] == 4 / 20.0


def test_mode_row_prefers_fields_the_report_carries() -> None:
    rep = report(bytes={"up": 100, "down": 1, "per_update_mean": 7.5})
    rep["clients"]["c0"].update(rss_peak_bytes=100, model_params=10, train_flops_per_sample=50)
    rep["clients"]["c1"].update(rss_peak_bytes=300, model_params=30, train_flops_per_sample=70)
    row = mode_row(rep)
    assert row["bytes_per_update"] == 7.5 and "bytes_per_update" not in row["reasons"]
    assert row["client_rss_peak_bytes"] == 300  # the peak, not the mean
    assert row["client_params"] == 20 and row["client_train_flops_per_sample"] == 60


def test_nan_accuracy_is_missing_not_a_number() -> None:
    row = mode_row(report(accuracy=float("nan")))
    assert row["final_accuracy"] is None and "final_accuracy" in row["reasons"]


def test_auto_target_is_reached_by_every_mode() -> None:
    rows = {"async": mode_row(report(0.8)), "sync": mode_row(report(0.6)), "fedavg": None}
    target = auto_target(rows)
    assert target == 0.54
    for row in rows.values():
        if row is not None:
            apply_target(row, target)
            assert row["time_to_target_seconds"] == 5.0
    assert auto_target({"async": None}) is None


def test_summary_with_every_mode() -> None:
    rows = {"async": mode_row(report(0.80, [[0, 0, 0.1], [4.0, 1, 0.8]], up=2000, sent=2)),
            "sync": mode_row(report(0.78, [[0, 0, 0.1], [10.0, 1, 0.78]], up=2000, sent=2)),
            "fedavg": mode_row(report(0.83, [[0, 0, 0.1], [20.0, 1, 0.83]], up=200_000, sent=2)),
            "fedbuff": mode_row(report(0.79, [[0, 0, 0.1], [8.0, 1, 0.79]], up=200_000, sent=2))}
    for row in rows.values():
        apply_target(row, 0.7)
    # the baseline is the faster of the two raw subscribers
    ingest = {"raw_rate": 4500.0, "raw_drain_rate": 5000.0, "raw_best_rate": 5000.0, "runtime_rate": 4000.0}
    scale = {"steps": [{"clients": 50, "connected": 50, "accepted": 30, "fuse_latency": {"p99": 0.4}},
                       {"clients": 100, "connected": 100, "accepted": 60, "fuse_latency": {"p99": 0.9}},
                       {"clients": 200, "connected": 200, "accepted": 90, "fuse_latency": {"p99": 1.7}}]}
    summary, reasons = summarize(rows, {}, ingest, scale)
    assert set(summary) == set(SUMMARY_KEYS) and reasons == {}
    # counted from the server's first report (1.0 s): (4 - 1) / (10 - 1); from launch: 4 / 10
    assert math.isclose(summary["time_to_target_ratio_async_over_sync"], 3 / 9)
    assert summary["time_to_target_ratio_async_over_sync_from_launch"] == 0.4
    assert summary["bytes_ratio_async_over_fedavg"] == 0.01
    assert math.isclose(summary["accuracy_gap_fedavg_minus_async"], 0.03)
    assert math.isclose(summary["accuracy_gap_fedbuff_minus_async"], -0.01)
    assert summary["ingest_ratio_runtime_over_raw"] == 0.8
    assert summary["max_clients"] == 100  # 200 missed the 1 s p99
    assert summary["fuse_latency_p99_seconds"] == 1.7  # at the largest step


def test_summary_with_missing_modes_gives_null_and_a_reason() -> None:
    rows = {"async": mode_row(report()), "sync": None, "fedavg": None, "fedbuff": None}
    apply_target(rows["async"], 0.5)
    refused = {"sync": "scenario schema refuses mode 'sync'", "fedavg": "run failed: boom"}
    summary, reasons = summarize(rows, refused, None, None)
    assert all(summary[k] is None for k in SUMMARY_KEYS)
    assert "refuses mode 'sync'" in reasons["time_to_target_ratio_async_over_sync"]
    assert "boom" in reasons["bytes_ratio_async_over_fedavg"]
    assert reasons["ingest_ratio_runtime_over_raw"] == "ingest benchmark did not run"
    assert reasons["max_clients"] == "scale run did not run"


def test_max_clients_needs_every_client_connected_and_accepted_updates() -> None:
    steps = [{"clients": 50, "connected": 50, "accepted": 10, "fuse_latency": {"p99": 0.3}},
             {"clients": 100, "connected": 97, "accepted": 20, "fuse_latency": {"p99": 0.3}},
             {"clients": 150, "connected": 150, "accepted": 0, "fuse_latency": {}}]
    assert max_clients(steps) == 50
    assert max_clients(steps[1:]) is None


def test_max_clients_stops_at_the_first_step_that_did_not_hold() -> None:
    def step(n: int, p99: float) -> dict:
        return {"clients": n, "connected": n, "accepted": n, "fuse_latency": {"p99": p99}}

    assert max_clients([step(50, 0.3), step(100, 0.5), step(200, 1.2), step(300, 0.8)]) == 100
    assert max_clients([step(300, 0.8), step(50, 0.3), step(100, 0.5)]) == 300  # order-independent
