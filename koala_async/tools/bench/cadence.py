"""How a flood of distinct client ids moves a real server's version cadence and status heartbeat.

:func:`flood_cadence` starts a :class:`~koala_async.tools.bench.fleet.Fleet` (Mosquitto, a server,
two clients), waits until it learns, records the server's knowledge versions and status messages for
``window`` seconds, then starts a :mod:`flood <koala_async.tools.bench.flood>` process (``ids`` made-up
client ids, each publishing statuses and valid updates) and records another ``window`` seconds. It
returns, for both windows, the intervals between versions (median, p90, max), the gaps between server
statuses (the event loop's responsiveness: the heartbeat is due every ``status_interval``), the
largest status payload, and whether every status decoded with the project's own decoder.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from koala_async.tools.bench.fleet import Fleet, FleetSettings, until
from koala_async.tools.processes import NodeProcess


def intervals(times: list[float], start: float, end: float) -> dict[str, float | int]:
    """Count, median, p90 and max of the gaps between consecutive ``times`` within [start, end]."""
    inside = [t for t in times if start <= t <= end]
    gaps = sorted(b - a for a, b in itertools.pairwise(inside))
    if not gaps:
        return {"events": len(inside), "median": float("nan"), "p90": float("nan"), "max": float("nan")}
    return {"events": len(inside), "median": round(statistics.median(gaps), 3),
            "p90": round(gaps[min(len(gaps) - 1, int(0.9 * len(gaps)))], 3), "max": round(gaps[-1], 3)}


def rates(progress: list[tuple[float, int, int, int, float]], start: float, end: float) -> dict[str, float]:
    """From the server statuses within [start, end]: wall seconds per distillation step (how fast the
    server learns, whatever the steps each version buys), accepted updates a second (the honest
    clients' pace sets the version cadence once a flood is over), and the learner's own seconds per
    version (fusion, distillation, evaluation: what per-client state could slow down)."""
    inside = [p for p in progress if start <= p[0] <= end]
    if len(inside) < 2:
        return {}
    (t0, v0, s0, a0, d0), (t1, v1, s1, a1, d1) = inside[0], inside[-1]
    nan = float("nan")
    return {"seconds_per_step": round((t1 - t0) / (s1 - s0), 4) if s1 > s0 else nan,
            "accepted_per_second": round((a1 - a0) / (t1 - t0), 2) if t1 > t0 else nan,
            "learner_seconds_per_version": round((d1 - d0) / (v1 - v0), 3) if v1 > v0 else nan}


async def flood_cadence(workdir: Path, ids: int = 10_000, window: float = 30.0, rate: float = 500.0,
                        settings: FleetSettings | None = None) -> dict[str, Any]:
    settings = settings or FleetSettings()
    workdir.mkdir(parents=True, exist_ok=True)
    async with Fleet(workdir, settings) as fleet:
        obs = fleet.observer
        await fleet.learning(3)
        t0 = time.monotonic()
        await asyncio.sleep(window)
        assert obs.proxy is not None
        spec = {"broker": fleet.url, "federation": settings.federation, "ids": ids, "rounds": 1, "rate": rate,
                "duration": 10 * window + 2 * ids / max(rate, 1),
                "proxy_id": obs.proxy.proxy_id, "n_proxy": obs.proxy.shape[0],
                "num_classes": obs.proxy.num_classes}
        spec_path = workdir / "flood.json"
        spec_path.write_text(json.dumps(spec))
        flooder = NodeProcess("flood", "flood", {}, workdir,
                              argv=[sys.executable, "-m", "koala_async.tools.bench.flood", str(spec_path)])
        fleet.processes.add(flooder)
        fleet.processes.start("flood")
        t1 = time.monotonic()
        await asyncio.to_thread(flooder.proc.wait)  # type: ignore[union-attr]
        t2 = time.monotonic()
        # The server now knows every flooding id: what does that cost, once the backlog is fused?
        await until(lambda: obs.server_status.get("pending", 0) < 10 and obs.progress[-1][0] > time.monotonic() - 2,
                    20 * window, "the flood's backlog to be fused", fleet)
        t_drained = time.monotonic()
        await asyncio.sleep(window)
        t3 = time.monotonic()
        status = dict(obs.server_status)
        alive = fleet.alive()
    result_path = spec_path.with_suffix(".result.json")
    flood = json.loads(result_path.read_text()) if result_path.exists() else {}
    version_times = [t for t, _ in obs.versions]
    status_times = [t for t, _ in obs.status_times]
    return {
        "ids": ids, "window_s": window, "status_interval": settings.status_interval,
        "rate": rate, "flood_seconds": round(t2 - t1, 1),
        "versions_before": intervals(version_times, t0, t1), "versions_during": intervals(version_times, t1, t2),
        "drain_seconds": round(t_drained - t2, 1),
        "versions_after": intervals(version_times, t_drained, t3),
        "status_gaps_before": intervals(status_times, t0, t1), "status_gaps_during": intervals(status_times, t1, t2),
        "status_gaps_after": intervals(status_times, t_drained, t3),
        "rates_before": rates(obs.progress, t0, t1), "rates_during": rates(obs.progress, t1, t2),
        "rates_after": rates(obs.progress, t_drained, t3),
        "status_bytes_max": max((size for _, size in obs.status_times), default=0),
        "status_undecodable": obs.status_undecodable, "flood": flood, "alive_at_end": alive,
        "server": {k: status.get(k) for k in ("version", "accepted", "clients_accepted", "clients_online_count",
                                               "pending", "rejected", "handler_errors", "contributions", "contributions_dropped",
                                               "handler_errors_by_class")},
    }


def main(argv: list[str]) -> int:
    """``python -m koala_async.tools.bench.cadence WORKDIR [IDS] [WINDOW] [RATE] [SERVER_JSON]``: print the
    result as JSON (``SERVER_JSON``: extra server config, e.g. ``{"max_contributions": 256}``)."""
    from koala_async.tools.cli import run_async

    workdir = Path(argv[0])
    ids = int(argv[1]) if len(argv) > 1 else 10_000
    window = float(argv[2]) if len(argv) > 2 else 30.0
    rate = float(argv[3]) if len(argv) > 3 else 500.0
    settings = FleetSettings(server_extra=json.loads(argv[4]) if len(argv) > 4 else {})
    print(json.dumps(run_async(flood_cadence(workdir, ids, window, rate, settings)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
