"""nodes/gateway_example.py runs as a real program: its own tasks, an embedded client, events printed,
and a clean stop on SIGTERM (what systemd sends)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
REPO = Path(__file__).resolve().parents[2]


def test_gateway_example_trains_prints_events_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, str(REPO / "nodes" / "gateway_example.py"), "--config",
                             str(REPO / "nodes" / "gateway.toml"), "--demo", "--sensor-period", "0.1",
                             "--batch", "16", "--heartbeat", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    accepted = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "event UpdateAccepted" in line:
                accepted.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert accepted.wait(90), "no accepted update within 90 s:\n" + "".join(lines[-30:])
        time.sleep(1.5)  # at least one heartbeat after it
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, "".join(lines[-30:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    reader.join(timeout=5)
    text = "".join(lines)
    for needle in ("event Connected", "event KnowledgeChanged", "event TierChanged", "event UpdatePublished",
                   "heartbeat:", "gateway stopped:"):
        assert needle in text, f"{needle!r} missing from:\n{text}"
    assert "Traceback" not in text and "Task was destroyed" not in text
