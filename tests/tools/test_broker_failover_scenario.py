"""`koala run scenarios/ci/broker-failover.toml`: two Mosquitto processes, every node given both URLs,
the first SIGKILLed for good; the federation fails over and goes on learning (its assertions hold)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "ci" / "broker-failover.toml"


@pytest.mark.slow
@pytest.mark.mosquitto
def test_the_federation_fails_over_to_the_second_broker_and_learns_on(tmp_path: Path) -> None:
    """Runtime 50-60 s: the scenario's 45 s plus process start-up and teardown."""
    report_path = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "koala_async", "run", str(SCENARIO), "--quiet", "--no-reference",
                           "--report", str(report_path), "--workdir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["brokers"] == 2 and all(a["passed"] for a in report["assertions"])
    kill = next(e for e in report["events"] if e["target"] == "broker")
    assert kill["action"] == "kill" and report["large_model"]["version"] > kill["server_version"] + 3
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "run").glob("*.log"))
    assert logs.count("failed over from") >= 4  # the server and the three clients
    # the server took at least what the clients heard it took (their last statuses), at most what they sent
    heard = sum(c["updates_accepted"] or 0 for c in report["clients"].values())
    assert heard <= report["updates"]["accepted"] <= report["updates"]["sent"]
