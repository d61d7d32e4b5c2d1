"""``koala bench``: the scenario once per mode (async, sync rounds, FedAvg, FedBuff) and seed, then the
server ingest benchmark, then the scale run; a side-by-side table (means over seeds with their
spread), a JSON report and a PNG of accuracy over time.

A mode the scenario schema refuses, a run that fails, or a figure a report lacks is recorded as
``null`` with a reason; no figure is ever made up. See ``docs/bench.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from koala_async.errors import KoalaError
from koala_async.tools.bench.ingest import IngestSettings, ingest_benchmark
from koala_async.tools.bench.scale import ScaleSettings, scale_run
from koala_async.tools.bench.seeds import combine, paired
from koala_async.tools.bench.stats import MODES, apply_target, auto_target, mode_row, summarize
from koala_async.tools.scenario import Scenario

log = logging.getLogger(__name__)

QUICK_INGEST = IngestSettings(publishers=2, clients_per_publisher=10, updates_per_client=40, rounds=1,
                              phase_timeout=45.0)
QUICK_SCALE = ScaleSettings(steps=(10, 20), hold=8.0, interval=2.0)


@dataclass(frozen=True)
class BenchSettings:
    modes: tuple[str, ...] = MODES
    # None: the scenario's federation.target_accuracy, else 0.9 x the lowest final accuracy among the
    # modes that ran.
    target: float | None = None
    quick: bool = False
    seeds: tuple[int, ...] = (0, 1, 2)  # every mode runs once per seed; figures are means with spreads
    ingest: IngestSettings | None = field(default_factory=IngestSettings)  # None skips the ingest benchmark
    scale: ScaleSettings | None = field(default_factory=ScaleSettings)  # None skips the scale run


def quick_scenario(scenario: Scenario) -> Scenario:
    """A tiny variant for CI: at most 3 clients, 4 updates each, short local training, no simulated
    slow devices and no churn."""
    groups, left = [], 3
    for group in scenario.clients:
        if left <= 0:
            break
        train = {**group.config.get("train", {}), "epochs": 3}
        config = {k: v for k, v in group.config.items() if k != "slowdown"}  # a smoke, not a race
        config |= {"max_updates": 4, "interval": 0.5, "train": train}
        groups.append(dataclasses.replace(group, count=min(group.count, left), config=config, start=True))
        left -= groups[-1].count
    federation = dataclasses.replace(scenario.federation, duration=min(scenario.federation.duration, 90.0),
                                     until="done")
    return dataclasses.replace(scenario, clients=groups, federation=federation,
                               events=[], availability=None, assertions=[], timeline=(), late=())


def with_mode(scenario: Scenario, mode: str, seed: int | None = None) -> Scenario:
    """``scenario`` in ``mode`` (and with federation ``seed``); ValueError when the schema refuses it."""
    federation = dataclasses.replace(scenario.federation, mode=mode)  # type: ignore[arg-type]
    if seed is not None:
        federation = dataclasses.replace(federation, seed=seed)
    return dataclasses.replace(scenario, federation=federation)


def _catalog_fallback(row: dict[str, Any], report: dict[str, Any]) -> None:
    """Params and train FLOPs of the tier the clients reported, from the measured tier catalog, when
    the report itself does not carry them (async and sync: the clients train that tier)."""
    from koala_async.learning.catalog import default_spec, measure
    from koala_async.learning.models import ARCHITECTURES

    tiers = {c.get("tier") for c in (report.get("clients") or {}).values()} - {None}
    if len(tiers) != 1 or next(iter(tiers)) not in ARCHITECTURES:
        return
    name = next(iter(tiers))
    spec = measure(name, default_spec(ARCHITECTURES[name].kind))
    for key, value in (("client_params", spec.params), ("client_train_flops_per_sample",
                                                        spec.train_flops_per_sample)):
        if row[key] is None:
            row[key] = value
            row["reasons"][key] = f"from the tier catalog ({name}, digits-sized input)"


PerSeed = dict[int, dict[str, dict[str, Any] | None]]


async def run_modes(scenario: Scenario, settings: BenchSettings, workdir: Path) -> tuple[PerSeed, dict[str, str]]:
    """Every mode once per seed, one run at a time (never two at once: they would share the cores).
    Returns {seed: {mode: row or None}} and why a mode has no row."""
    from koala_async.tools.runner import run_scenario

    per_seed: PerSeed = {}
    reasons: dict[str, str] = {}
    for seed in settings.seeds:
        rows = per_seed.setdefault(seed, {})
        for mode in settings.modes:
            try:
                variant = with_mode(scenario, mode, seed)
            except ValueError as exc:
                rows[mode], reasons[mode] = None, f"scenario schema refuses mode {mode!r}: {exc}"
                continue
            try:
                report, _ = await run_scenario(variant, quiet=True, workdir=str(workdir / f"seed-{seed}" / mode),
                                               local_reference=False)
            except KoalaError as exc:
                rows[mode] = None
                reasons[mode] = f"{reasons[mode]}; " if mode in reasons else ""
                reasons[mode] += f"seed {seed}: run failed: {exc}"
                continue
            row = mode_row(report)
            if mode in ("async", "sync"):
                _catalog_fallback(row, report)
            rows[mode] = row
            log.info("seed %d %s: final %.3f", seed, mode, row.get("final_accuracy") or float("nan"))
    return per_seed, reasons


async def run_bench(scenario: Scenario, settings: BenchSettings, workdir: str | None = None) -> dict[str, Any]:
    """Everything ``koala bench`` measures, as one JSON-ready dict."""
    started = time.monotonic()
    work = Path(workdir or tempfile.mkdtemp(prefix="koala-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if settings.quick:
        scenario = quick_scenario(scenario)
    per_seed, mode_reasons = await run_modes(scenario, settings, work)
    target, source = settings.target, "given"
    if target is None and scenario.federation.target_accuracy is not None:
        target, source = scenario.federation.target_accuracy, "scenario"
    if target is None:
        target, source = auto_target({f"{m}/{s}": r for s, rows in per_seed.items() for m, r in rows.items()}), "auto"
    for seed_rows in per_seed.values():
        for row in seed_rows.values():
            if row is not None:
                apply_target(row, target)
    rows: dict[str, dict[str, Any] | None] = {}
    for mode in settings.modes:
        ran = [(s, r[mode]) for s, r in per_seed.items() if r.get(mode) is not None]
        rows[mode] = combine([r for _, r in ran], [s for s, _ in ran]) if ran else None  # type: ignore[misc]
    ingest: dict[str, Any] | None = None
    if settings.ingest is not None:
        try:
            ingest = await ingest_benchmark(settings.ingest, work / "ingest")
        except (KoalaError, TimeoutError, OSError) as exc:
            ingest = {"error": f"ingest benchmark failed: {exc or type(exc).__name__}",
                      "raw_rate": None, "runtime_rate": None}
    scale = await scale_run(settings.scale, work / "scale") if settings.scale is not None else None
    summary, reasons = summarize(rows, mode_reasons, ingest, scale)
    # Cross-mode figures: within each seed first, then the mean over seeds (its spread beside it).
    pairs = paired(per_seed)
    for key, figure in pairs.items():
        summary[key] = figure["mean"]
        if figure["mean"] is None:
            reasons.setdefault(key, "no seed had both modes' figure")
        else:
            reasons.pop(key, None)
    for row in rows.values():
        if row is not None:
            row["server_ingest_rate"] = (ingest or {}).get("runtime_rate")
    return {
        "scenario": scenario.source, "quick": settings.quick, "modes": list(settings.modes),
        "seeds": list(settings.seeds), "target_accuracy": target, "target_source": source,
        "colocation": colocation(scenario),
        "per_mode": {m: rows[m] for m in settings.modes},
        "mode_reasons": mode_reasons, "ingest": ingest, "scale": scale,
        "summary": summary, "summary_spread": pairs, "summary_reasons": reasons,
        "load_average": _load(), "workdir": str(work), "wall_seconds": round(time.monotonic() - started, 2),
    }


def colocation(scenario: Scenario) -> str:
    """How the bench keeps co-located nodes from stealing each other's compute (reported with it)."""
    from koala_async.tools.processes import core_plan

    plan = core_plan() if scenario.federation.pin_cores else None
    pinned = ("no pinning" if plan is None else
              f"server pinned to cores {sorted(plan[0])}, broker and clients to {sorted(plan[1])}")
    return (f"{pinned} (os.sched_setaffinity); each client's training lasts its CPU time x its slowdown "
            "(or its profile's FLOP time), so sharing a core does not change a device's speed")


def _load() -> list[float] | None:
    import os

    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def write_outputs(result: dict[str, Any], report_path: str | None, plot_path: str | None) -> None:
    if report_path:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(json.dumps(result, indent=2))
    if plot_path:
        from koala_async.tools.bench.view import plot_modes

        plot_modes(result, plot_path)
