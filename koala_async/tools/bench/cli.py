"""The ``koala bench`` command line: arguments, and running :func:`koala_async.tools.bench.modes.run_bench`."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

from koala_async.errors import ConfigError
from koala_async.tools.bench.stats import MODES

DEFAULT_SCENARIOS = ("scenarios/bench/stragglers-churn.toml", "scenarios/quickstart.toml")


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", nargs="?", help=f"scenario file (default: the first of {DEFAULT_SCENARIOS} "
                   "that exists)")
    p.add_argument("--report", help="write the JSON result here")
    p.add_argument("--plot", help="write a PNG of accuracy against wall time for every mode here")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated modes (default: %(default)s)")
    p.add_argument("--target", type=float, help="target accuracy for time-to-target (default: the scenario's "
                   "federation.target_accuracy, else 0.9 x the lowest final accuracy among the modes)")
    p.add_argument("--quick", action="store_true", help="a tiny variant for CI (well under 2 minutes)")
    p.add_argument("--seeds", help="how many seeds every mode runs with (N: seeds 0..N-1), or a comma-separated "
                   "list of seeds (default: 3; 1 with --quick)")
    p.add_argument("--broker", help="broker for the scenario runs: embedded, mosquitto or mqtt://HOST:PORT")
    p.add_argument("--workdir", help="where runs keep configs and logs (default: a temp dir)")
    p.add_argument("--steps", help="scale run client counts, comma-separated (default: 50,100,200,300,400,600,800)")
    p.add_argument("--hold", type=float, help="seconds each scale step holds (default: 45)")
    p.add_argument("--interval", type=float, help="scale run: mean seconds between a client's updates "
                   "(default: 40, jittered +-50%%)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: modes, ingest, scale")


def _settings(args: argparse.Namespace) -> object:
    import dataclasses

    from koala_async.tools.bench.ingest import IngestSettings
    from koala_async.tools.bench.modes import QUICK_INGEST, QUICK_SCALE, BenchSettings
    from koala_async.tools.bench.scale import ScaleSettings

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - {"modes", "ingest", "scale"}
    if unknown:
        raise ConfigError(f"--skip: unknown parts {sorted(unknown)}; use modes, ingest, scale")
    if not modes and "modes" not in skip:
        raise ConfigError("--modes: name at least one mode")
    scale = QUICK_SCALE if args.quick else ScaleSettings()
    try:
        if args.steps:
            scale = dataclasses.replace(scale, steps=tuple(int(v) for v in args.steps.split(",")))
        if args.hold is not None:
            scale = dataclasses.replace(scale, hold=args.hold)
        if args.interval is not None:
            scale = dataclasses.replace(scale, interval=args.interval)
    except ValueError as exc:
        raise ConfigError(f"scale settings: {exc}") from None
    return BenchSettings(modes=() if "modes" in skip else modes, target=args.target, quick=args.quick,
                         seeds=parse_seeds(args.seeds, 1 if args.quick else 3),
                         ingest=None if "ingest" in skip else (QUICK_INGEST if args.quick else IngestSettings()),
                         scale=None if "scale" in skip else scale)


def parse_seeds(text: str | None, default: int) -> tuple[int, ...]:
    """``--seeds``: a count N (seeds 0..N-1) or a comma-separated list; ConfigError when neither."""
    try:
        if text is None:
            return tuple(range(default))
        if "," in text:
            seeds = tuple(int(v) for v in text.split(",") if v.strip())
        else:
            seeds = tuple(range(int(text)))
    except ValueError:
        raise ConfigError(f"--seeds: {text!r} is neither a count nor a comma-separated list of seeds") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--seeds: need at least one distinct, non-negative seed, got {text!r}")
    return seeds


def bench_main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from koala_async.tools.bench.modes import run_bench, write_outputs
    from koala_async.tools.bench.view import modes_table, scale_table, summary_table
    from koala_async.tools.cli import run_async
    from koala_async.tools.scenario import load_scenario

    path = args.scenario or next((p for p in DEFAULT_SCENARIOS if Path(p).exists()), None)
    if path is None:
        raise ConfigError(f"no scenario given and none of {DEFAULT_SCENARIOS} exists")
    scenario = load_scenario(path, broker=args.broker)
    settings = _settings(args)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # reap every process on a cancelled job
    logging.getLogger("koala_async.io.transport").setLevel(logging.ERROR)
    result = run_async(run_bench(scenario, settings, args.workdir))  # type: ignore[arg-type]
    write_outputs(result, args.report, args.plot)
    console = Console()
    if result["modes"]:
        console.print(modes_table(result))
    if result.get("scale"):
        console.print(scale_table(result))
    console.print(summary_table(result))
    for what, path_ in (("report", args.report), ("plot", args.plot)):
        if path_:
            console.print(f"{what} written to {path_}")
    errors = [f"{part}: {result[part]['error']}" for part in ("ingest", "scale")
              if result.get(part) and result[part].get("error")]
    for error in errors:
        console.print(f"[red]{error}[/]")
    return 1 if errors else 0
