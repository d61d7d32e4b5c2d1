"""The ``koala`` command: run a scenario, or run one node (broker, server, client) on its own."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from koala_async.core.modes import MODES
from koala_async.errors import ConfigError, KoalaError

T = TypeVar("T")
log = logging.getLogger("koala_async")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is importable, else on the default asyncio loop."""
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    except ImportError:
        return asyncio.run(coro)


async def _until_signalled(*extra: asyncio.Future[Any] | asyncio.Task[Any],
                           stop: asyncio.Future[None] | None = None) -> None:
    """Wait for SIGINT/SIGTERM (installed by the CLI, never by the library) or any ``extra``; ``stop``
    is a future from :func:`_on_signal` when the handlers were installed earlier."""
    stop = stop or _on_signal()
    try:
        await asyncio.wait([stop, *extra], return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _on_signal() -> asyncio.Future[None]:
    """A future that SIGINT/SIGTERM completes, from now on: a node that is still starting (loading
    data, replaying its journal) when the signal comes then stops cleanly once started."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: None if stop.done() else stop.set_result(None))
    return stop


def _load_node_table(path: str | None, role: str) -> tuple[dict[str, Any], str, str | None]:
    """The ``[role]`` table (or the top level) of a .toml or .json node config."""
    if not path:
        return {}, "", None
    if path.endswith(".json"):
        text = Path(path).read_text()
        data = json.loads(text)
    else:
        from koala_async.config import read_toml

        data, text = read_toml(path)
    return dict(data.get(role, data)), text, path


def _overrides(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, Any]:
    return {key: getattr(args, attr) for attr, key in mapping.items() if getattr(args, attr, None) is not None}


# CLI attribute -> config key, for the broker credential and TLS flags every node takes.
_SECURITY_FLAGS = {"username": "username", "password": "password", "ca_file": "ca_file",
                   "cert_file": "cert_file", "key_file": "key_file", "tls_insecure": "tls_insecure"}


def _add_security_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--username", help="broker username (use the node id: the shipped ACL relies on it)")
    p.add_argument("--password", help="broker password")
    p.add_argument("--ca-file", help="CA bundle for mqtts:// brokers")
    p.add_argument("--cert-file", help="client certificate (mutual TLS)")
    p.add_argument("--key-file", help="client certificate key")
    p.add_argument("--tls-insecure", action="store_true", default=None,
                   help="do not verify the broker certificate (testing only)")
    p.add_argument("--state-dir", help="keep crash-safe state here (checkpoints, pending update)")


def cmd_robustness(args: argparse.Namespace) -> int:
    from koala_async.tools.bench.robustness import main as robustness_main

    return robustness_main(args)


def cmd_hostile(args: argparse.Namespace) -> int:
    from koala_async.tools.bench.hostile import main as hostile_main

    return hostile_main(args)


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from koala_async.tools.display import assertions_table, summary_table
    from koala_async.tools.runner import run_scenario
    from koala_async.tools.scenario import load_scenario

    scenario = load_scenario(args.scenario, broker=args.broker, mode=args.mode, sets=args.set or (),
                             unsets=args.unset or ())  # fails fast: nothing started
    # SIGTERM (a CI job being cancelled) unwinds like Ctrl-C, so every started process is reaped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # The runner's own broker link drops on a broker restart by design; the view shows the events.
    logging.getLogger("koala_async.io.transport").setLevel(logging.ERROR)
    report, code = run_async(run_scenario(scenario, report_path=args.report, quiet=args.quiet,
                                          workdir=args.workdir, plot_path=args.plot,
                                          local_reference=not args.no_reference))
    console = Console()
    console.print(summary_table(report))
    console.print(assertions_table(report))
    if report.get("failure"):
        console.print(f"[red]run did not complete: {report['failure']}[/]")
    console.print("[green]PASS[/]" if code == 0 else "[red]FAIL[/]")
    if args.report:
        console.print(f"report written to {args.report}")
    if args.plot:
        console.print(f"plot written to {args.plot}")
    return code


def cmd_bench(args: argparse.Namespace) -> int:
    from koala_async.tools.bench.cli import bench_main

    return bench_main(args)


def cmd_broker(args: argparse.Namespace) -> int:
    from koala_async.io.broker import EmbeddedBroker

    async def main() -> None:
        async with EmbeddedBroker(args.host, args.port) as broker:
            print(f"koala broker listening at {broker.url}", flush=True)
            await _until_signalled()

    run_async(main())
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from koala_async.config import load_into
    from koala_async.nodes.server import ServerConfig, ServerNode

    table, text, source = _load_node_table(args.config, "server")
    table.update(_overrides(args, {"broker": "broker", "federation": "federation", "dataset": "dataset",
                                   "id": "node_id", "report": "report_path", "proxy": "proxy_path",
                                   "test": "test_path", **_SECURITY_FLAGS, "state_dir": "state_dir",
                                   "mode": "mode",
                                   "keys_file": "keys_file"}))
    config = load_into(ServerConfig, table, source=source, text=text, prefix="server" if source else "")

    async def main() -> None:
        stop = _on_signal()
        async with ServerNode(config) as server:
            log.info("server %s up on %s (large model %s)", config.node_id, config.broker, server.learner.model_name)
            await _until_signalled(stop=stop)
        log.info("server %s stopped", config.node_id)

    run_async(main())
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    from koala_async.config import load_into
    from koala_async.nodes.client import ClientConfig, ClientNode

    table, text, source = _load_node_table(args.config, "client")
    table.update(_overrides(args, {"broker": "broker", "federation": "federation", "id": "node_id",
                                   "data": "data_path", "dataset": "dataset", "shard": "shard",
                                   "num_shards": "num_shards", "tier": "tier", "max_updates": "max_updates",
                                   "profile": "profile",
                                   **_SECURITY_FLAGS, "state_dir": "state_dir", "mode": "mode"}))
    config = load_into(ClientConfig, table, source=source, text=text, prefix="client" if source else "")
    from koala_async.config import rekey
    from koala_async.learning.config_checks import check_client

    try:
        check_client(config)  # imports torch, which the node is about to load anyway
    except ConfigError as exc:
        rekey(exc, "client" if source else "", source, text)
    if args.dry_run:
        from koala_async.tools.dryrun import plan, render

        result = plan(config)
        print(json.dumps(result, indent=2) if args.json else render(result))
        return 0

    async def main() -> None:
        async with ClientNode(config) as client:
            await _until_signalled(asyncio.ensure_future(client.done()) if args.exit_when_done else
                                   asyncio.get_running_loop().create_future())

    run_async(main())
    return 0


def cmd_tiers(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from koala_async.learning.catalog import default_spec, measure_many
    from koala_async.learning.models import client_tiers, default_large, large_models
    from koala_async.learning.registry import check_model
    from koala_async.tools.tiers import catalog_rows, tiers_table

    torch.set_num_threads(1)
    console = Console() if sys.stdout.isatty() else Console(width=120)
    kinds = [args.kind] if args.kind else ["image", "vector"]
    shape = tuple(int(v) for v in args.input_shape.split(",")) if args.input_shape else None
    out = {}
    for kind in kinds:
        spec = default_spec(kind, shape, args.classes)
        tiers = tuple(args.tiers.split(",")) if args.tiers else tuple(client_tiers(kind))
        large = args.large or default_large(kind)
        for i, name in enumerate(tiers):
            check_model(name, f"--tiers[{i}]", kind)
        check_model(large, "--large", kind)
        others = [n for n in large_models(kind) if n != large]
        # a tools process: count FLOPs here (the compiler stack FlopCounterMode loads costs nothing that matters)
        measured = measure_many([*tiers, large, *others], spec, in_process=True)
        rows = catalog_rows(measured[:len(tiers)], measured[len(tiers)], measured[len(tiers) + 1:])
        out[kind] = rows
        if not args.json:
            console.print(tiers_table(rows, f"{kind} tiers, input {spec.shape}, {spec.num_classes} classes "
                                            f"(savings vs {large})"))
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="koala", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a scenario file: broker, server and clients as real processes")
    p.add_argument("scenario")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--quiet", action="store_true", help="no live view; a progress line every few seconds")
    p.add_argument("--workdir", help="where node configs and logs go (default: a temp dir)")
    p.add_argument("--plot", help="write a PNG plot here (accuracy with events, updates, staleness)")
    p.add_argument("--broker", help="override the scenario's broker: embedded, mosquitto or mqtt://HOST:PORT")
    p.add_argument("--no-reference", action="store_true", help="skip the local-only reference training")
    p.add_argument("--mode", choices=MODES,
                   help="override the scenario's [federation] mode: async KOALA, KOALA in synchronous "
                        "rounds, or FedAvg of the large model")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change a scenario key before validation, e.g. server.lr=3e-4 or "
                        "clients.0.config.max_updates=4 (repeatable)")
    p.add_argument("--unset", action="append", metavar="KEY",
                   help="remove a scenario key, e.g. server.large_weights (repeatable)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="compare modes, benchmark server ingest, ramp clients (docs/bench.md)")
    from koala_async.tools.bench.cli import add_bench_arguments

    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("tiers", help="print the measured client tier catalog and its savings vs the large model")
    p.add_argument("--kind", choices=("image", "vector"), help="one input kind (default: both)")
    p.add_argument("--input-shape", help="C,H,W for images or D for vectors (default: digits, 1,8,8 / 64)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--large", help="the large model the savings are against (default: the kind's default; "
                                   "any model name: built-in, NAME@SIDE, package.module:factory)")
    p.add_argument("--tiers", help="comma-separated client tier names instead of the built-in ladder")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.set_defaults(func=cmd_tiers)

    p = sub.add_parser("broker", help="run the embedded MQTT broker (amqtt) standalone")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("server", help="run a server node")
    p.add_argument("--config", help="TOML or JSON file with a [server] table (see nodes/server.toml)")
    p.add_argument("--broker", help="mqtt://HOST:PORT")
    p.add_argument("--federation")
    p.add_argument("--id")
    p.add_argument("--dataset", help="digits, npz:PATH, mnist:DIR or cifar10:DIR")
    p.add_argument("--proxy", help=".npz with x: the proxy inputs")
    p.add_argument("--test", help=".npz with x and y: the held-out test set")
    p.add_argument("--report", help="write a JSON report here on shutdown")
    p.add_argument("--keys-file", help="JSON {client id: key}: require HMAC-signed updates")
    p.add_argument("--mode", choices=MODES, help="federation mode (default async)")
    _add_security_flags(p)
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("client", help="run a client node")
    p.add_argument("--config", help="TOML or JSON file with a [client] table (see nodes/client.toml)")
    p.add_argument("--broker", help="mqtt://HOST:PORT")
    p.add_argument("--federation")
    p.add_argument("--id")
    p.add_argument("--data", help=".npz with x and y: this client's private data")
    p.add_argument("--dataset")
    p.add_argument("--shard", type=int)
    p.add_argument("--num-shards", type=int)
    p.add_argument("--tier")
    p.add_argument("--max-updates", type=int)
    p.add_argument("--exit-when-done", action="store_true", help="exit after max-updates updates")
    p.add_argument("--profile", help="simulate a device class (pi-zero, pi-4, laptop, ...): caps the probe")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resource probe, chosen tier and predicted memory/time; connect to nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    p.add_argument("--mode", choices=MODES, help="federation mode (default async)")
    _add_security_flags(p)
    p.set_defaults(func=cmd_client)

    p = sub.add_parser("hostile", help="attack a real federation (Mosquitto, server, clients) with every class "
                                       "of bad input; print classes -> counts")
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--flood-ids", type=int, default=10_000, help="made-up client ids in the flood class")
    p.add_argument("--workdir", help="where configs and logs go (default: a temp dir)")
    p.add_argument("--json", help="write the result here")
    p.set_defaults(func=cmd_hostile)

    p = sub.add_parser("robustness", help="robust vs mean fusion with adversarial clients (in-process)")
    from koala_async.tools.bench.robustness import add_arguments as robustness_arguments

    robustness_arguments(p)
    p.set_defaults(func=cmd_robustness)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + (1 if args.command in ("server", "client") else 0), 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # amqtt logs tracebacks at ERROR when a client disconnects mid-delivery (a race inside its
    # broadcast loop that it recovers from); keep them out of the user's view unless asked for.
    if args.verbose < 2:
        logging.getLogger("amqtt").setLevel(logging.CRITICAL)
        logging.getLogger("transitions").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except KoalaError as exc:
        print(f"koala: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("koala: interrupted", file=sys.stderr)
        return 130
