"""``koala client --dry-run``: probe, tier and predictions, without touching any broker."""

from __future__ import annotations

from koala_async.learning.models import client_tiers

import json
import socket
import subprocess
import sys
import time

import pytest

from koala_async.errors import DataError
from koala_async.nodes.client import ClientConfig
from koala_async.tools.dryrun import plan, render

pytestmark = pytest.mark.timeout(120)


def test_dry_run_cli_prints_the_plan_and_connects_to_nothing() -> None:
    # A port that is listening but never accepts: a client that tried to connect would hang or fail.
    with socket.socket() as trap:
        trap.bind(("127.0.0.1", 0))
        trap.listen(0)
        port = trap.getsockname()[1]
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-c", "from koala_async.tools.cli import main; raise SystemExit(main())",
                              "client", "--dry-run", "--json", "--tier", "auto", "--profile", "pi-zero",
                              "--broker", f"mqtt://127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=100, check=False)
        trap.settimeout(0.1)
        with pytest.raises(TimeoutError):
            trap.accept()  # nobody knocked
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["tier"] == "image-tiny"  # a pi-zero's 150 MFLOP/s affords only the smallest tier
    assert "s/epoch > budget" in result["reason"]
    assert result["probe"]["profile"] == "pi-zero"
    pred = result["predicted"]
    assert pred["peak_rss_mib"] > pred["baseline_rss_mib"] > 0
    assert pred["epoch_s"] > 0 and pred["update_s"] == pytest.approx(pred["epoch_s"] * 10, rel=1e-2)
    assert [row["tier"] for row in result["catalog"]] == client_tiers("image")
    print(f"\ndry run took {time.monotonic() - started:.1f}s")


def test_embedded_client_plan_and_text() -> None:
    config = ClientConfig(dataset="none", input_shape=(64,), num_classes=5, max_samples=2000, tier="vector-small")
    result = plan(config)
    assert result["data"]["samples"] == 2000 and result["tier"] == "vector-small"
    text = render(result)
    for phrase in ("dry run (no broker contacted)", "resource probe", "chosen tier: vector-small",
                   "predicted peak memory", "predicted training time"):
        assert phrase in text
    with pytest.raises(DataError, match="input_shape and num_classes"):
        plan(ClientConfig(dataset="none"))
