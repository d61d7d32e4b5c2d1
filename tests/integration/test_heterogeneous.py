"""A heterogeneous federation end to end: a broker, a server and three clients as OS processes, the
clients simulating three device classes with ``tier = "auto"``. Each class must pick a different
small model and the server's large model must learn from their mixed logits.

Runs ``scenarios/ci/heterogeneous.toml`` through the scenario runner (about 30-60 s on a loaded
2-core machine; the tier catalog's FLOP count adds a few seconds the first time on a machine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from koala_async.learning.models import client_tiers
from koala_async.tools.runner import run_scenario
from koala_async.tools.scenario import load_scenario

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "ci" / "heterogeneous.toml"


@pytest.mark.timeout(180)
async def test_three_device_classes_pick_three_tiers_and_the_large_model_learns(tmp_path: Path) -> None:
    report, code = await run_scenario(load_scenario(SCENARIO), quiet=True, workdir=str(tmp_path),
                                      local_reference=False)
    assert code == 0, report.get("failure")
    clients = report["clients"]
    tiers = {cid: c["tier"] for cid, c in clients.items()}
    ladder = client_tiers("image")  # smallest first
    # three classes, three different small models, larger for the stronger device
    assert ladder.index(tiers["zero-0"]) < ladder.index(tiers["pi4-0"]) < ladder.index(tiers["laptop-0"]), tiers
    assert all(c["tier_reason"] and c["updates_sent"] == 3 for c in clients.values())
    assert report["updates"]["accepted"] == 9 and not report["updates"]["rejected"]
    before = report["large_model"]["timeline"][0][2]
    after = report["large_model"]["test_accuracy"]
    assert before < 0.2 and after >= 0.6, report["large_model"]["timeline"]
    # every client's own small model, judged on the server's held-out test split after the run
    assert set(report["small_models"]["per_client"]) == set(tiers)
    assert all(0.2 < a <= 1 for a in report["small_models"]["per_client"].values())
    print(f"\nheterogeneous: tiers {tiers}; large model {before:.3f} -> {after:.3f} "
          f"in {report['wall_seconds']:.0f} s; small models {report['small_models']['per_client']}")
