"""The main job's path end to end: `koala run` on a scenario, as real processes, writing a report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCENARIO = """
[federation]
name = "cli-smoke"
dataset = "digits"
seed = 1
alpha = 0.5
duration = 150
settle = 1.5

[[clients]]
count = 3
[clients.config]
max_updates = 4
interval = 0.3
"""


@pytest.mark.slow
def test_koala_run_writes_report(tmp_path: Path) -> None:
    scenario = tmp_path / "smoke.toml"
    scenario.write_text(SCENARIO)
    report_path = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "koala_async", "run", str(scenario), "--quiet",
                           "--report", str(report_path), "--workdir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(report_path.read_text())
    timeline = report["large_model"]["timeline"]
    assert timeline, "no server version was observed"
    assert report["large_model"]["test_accuracy"] > timeline[0][2] + 0.2  # learned from a random start
    assert report["updates"]["accepted"] == 12 == report["updates"]["sent"]
    assert report["updates"]["rejected"] == {}
    assert set(report["clients"]) == {"client-0", "client-1", "client-2"}
    assert report["bytes"]["up"] > 0 and report["bytes"]["down"] > report["bytes"]["up"]
    assert 0 < report["local_only"]["mean_test_accuracy"] < 1
    assert report["staleness"]["max"] >= 0 and report["wall_seconds"] > 0


def test_bad_scenario_key_fails_fast(tmp_path: Path) -> None:
    scenario = tmp_path / "typo.toml"
    scenario.write_text("[federation]\nname = 'x'\nalhpa = 0.5\n\n[[clients]]\ncount = 1\n")
    proc = subprocess.run([sys.executable, "-m", "koala_async", "run", str(scenario), "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "federation.alhpa" in proc.stderr and ":3" in proc.stderr
