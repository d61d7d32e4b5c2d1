"""``koala bench`` end to end (tiny), and how it treats modes the scenario schema refuses."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from koala_async.tools.bench.stats import SUMMARY_KEYS
from koala_async.tools.bench.modes import BenchSettings, quick_scenario, run_modes
from koala_async.tools.scenario import load_scenario

QUICKSTART = Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.toml"


def _finite_positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_koala_bench_quick_end_to_end(tmp_path: Path) -> None:
    report_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = subprocess.run(
        [sys.executable, "-m", "koala_async", "bench", str(QUICKSTART), "--quick", "--modes", "async",
         "--steps", "4,8", "--hold", "5", "--report", str(report_path), "--plot", str(plot_path),
         "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=220, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(report_path.read_text())
    assert plot_path.stat().st_size > 0

    row = result["per_mode"]["async"]
    assert row["completed"], row.get("failure")
    assert 0 <= row["final_accuracy"] <= 1
    assert _finite_positive(row["bytes_up_per_client"]) and _finite_positive(row["bytes_per_update"])
    assert _finite_positive(row["client_params"]) and _finite_positive(row["client_train_flops_per_sample"])
    assert len(row["timeline"]) >= 2

    ingest = result["ingest"]
    assert ingest["error"] is None
    assert all(_finite_positive(ingest[f"{side}_rate"]) for side in ("raw", "raw_drain", "runtime", "runtime_acks"))
    assert all(r["runtime_accepted"] == ingest["messages"] and not r["runtime_rejected"] for r in ingest["rounds"])

    scale = result["scale"]
    assert scale["error"] is None and [s["clients"] for s in scale["steps"]] == [4, 8]
    for step in scale["steps"]:
        assert step["connected"] == step["clients"]
        assert step["accepted"] > 0 and step["fuse_latency"]["count"] > 0
        assert 0 < step["fuse_latency"]["p50"] <= step["fuse_latency"]["p99"] <= step["fuse_latency"]["max"]
        # one source, one instant: published = accepted + rejected + superseded + pending
        assert step["balanced"] and step["published"] == (step["accepted"] + sum(step["rejected"].values())
                                                          + step["superseded"] + step["pending"])
        assert step["server_cpu_ms_per_arrival"] > 0 and step["load_average"] >= 0
    # once the load stops and every verdict is back, the clients and the server count alike
    assert scale["final"]["reconciled"] and scale["final"]["pending"] == 0, scale["final"]

    summary = result["summary"]
    assert set(summary) == set(SUMMARY_KEYS)
    assert _finite_positive(summary["ingest_ratio_runtime_over_raw"])
    assert _finite_positive(summary["fuse_latency_p99_seconds"])
    for key, value in summary.items():
        assert value is not None or result["summary_reasons"].get(key), f"{key} is null without a reason"


async def test_a_refused_mode_is_null_with_a_reason_and_nothing_runs(tmp_path: Path) -> None:
    scenario = quick_scenario(load_scenario(QUICKSTART))
    rows, reasons = await run_modes(scenario, BenchSettings(modes=("no-such-mode",), seeds=(0, 1)), tmp_path)
    assert rows == {0: {"no-such-mode": None}, 1: {"no-such-mode": None}}
    assert "refuses mode 'no-such-mode'" in reasons["no-such-mode"]
    assert not any(tmp_path.iterdir())


def test_quick_scenario_is_tiny() -> None:
    scenario = quick_scenario(load_scenario(QUICKSTART))
    assert scenario.num_clients <= 3
    assert all(g.config["max_updates"] <= 4 for g in scenario.clients)
    assert scenario.federation.duration <= 90 and not scenario.timeline
