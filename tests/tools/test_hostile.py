"""The hostile-input harness, short: a real Mosquitto, a real ``koala server`` and two ``koala client``
processes (server key pinned), every attack class and a 300-id flood; every class must be counted
exactly where expected, every process must survive, and an honest update must be accepted afterwards.

Slow, real infrastructure: about 90 s on the 2-core dev machine. The full run is ``koala hostile``."""

from __future__ import annotations

from pathlib import Path

import pytest

from koala_async.tools.bench.hostile import HostileSettings, run_hostile, table

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow, pytest.mark.timeout(600)]


async def test_every_class_of_hostile_input_is_counted_and_the_federation_survives(tmp_path: Path) -> None:
    result = await run_hostile(tmp_path, HostileSettings(clients=2, flood_ids=300))
    print("\n" + table(result))
    wrong = [(r["name"], r["expect"], r["got"]) for r in result["rows"] if not r["ok"]]
    assert not wrong, wrong
    assert all(result["alive"].values()), result["alive"]
    assert result["honest_update_accepted"]
    assert result["status_undecodable"] == 0 and result["status_bytes_max"] < 16 * 1024
    assert result["server_handler_errors"] == {}  # every class was refused by a check, none by an accident
    assert all(errors == {} for errors in result["client_handler_errors"].values())
    assert all(code == 0 for name, code in result["stop_codes"].items() if name != "broker"), result["stop_codes"]
