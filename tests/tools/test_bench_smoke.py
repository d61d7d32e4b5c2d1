"""`koala run scenarios/ci/bench-smoke.toml --mode fedavg`: the baseline as real processes, reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SMOKE = Path(__file__).resolve().parents[2] / "scenarios" / "ci" / "bench-smoke.toml"


@pytest.mark.slow
def test_fedavg_mode_runs_as_processes_and_reports_what_the_bench_compares(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "koala_async", "run", str(SMOKE), "--mode", "fedavg", "--quiet",
                           "--no-reference", "--report", str(report_path), "--workdir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["mode"] == "fedavg"
    timeline = report["large_model"]["timeline"]
    assert [v for _, v, _ in timeline][-1] == 2  # two rounds: one per update of the 2-update budget
    assert report["large_model"]["test_accuracy"] > timeline[0][2] + 0.3
    assert report["updates"]["accepted"] == 6 and report["updates"]["rejected"] == {}
    assert report["large_model"]["first_report_at"] == timeline[0][0]
    for cid, client in report["clients"].items():
        assert client["mode"] == "fedavg" and client["tier"] == "image-large", cid
        assert client["model_params"] > 500_000 and client["train_flops_per_sample"] > 1e6
        assert client["bytes_per_update"] > 4 * client["model_params"]  # full float32 weights
        assert client["rss_peak_bytes"] > 50 * 2**20  # a real process with torch loaded
    assert report["bytes"]["per_update_mean"] > 4 * 500_000
