"""An IoT gateway's own asyncio program with a koala client embedded in it.

The gateway runs its own periodic tasks (a simulated sensor that produces labelled samples, here
digits from the federation's private pool, and a heartbeat) and a :class:`koala_async.ClientNode` in
one event loop. Samples go into the running client as they come (``add_samples``); the client trains
in a worker thread whenever it is ready, so the gateway's tasks keep their beat; node events
(knowledge versions, tier, updates published and the server's verdicts, connection lost/regained)
are printed as they happen.

Against a real federation (a broker and a ``koala server`` running elsewhere)::

    python nodes/gateway_example.py --config nodes/gateway.toml --broker mqtt://BROKER:1883

Self-contained demo (embedded broker and a server in this process too), stopping after 30 s::

    python nodes/gateway_example.py --config nodes/gateway.toml --demo --seconds 30

This file is a program, so it may install signal handlers and configure logging; the library never does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from koala_async import ClientConfig, ClientNode, EmbeddedBroker, ServerConfig, ServerNode
from koala_async.config import load_into, read_toml


async def sensor(client: ClientNode, x: np.ndarray, y: np.ndarray, period: float, batch: int) -> None:
    """Every ``period`` seconds, ``batch`` new labelled readings (cycling through the pool)."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    position = 0
    while True:
        pick = order[np.arange(position, position + batch) % len(order)]
        position += batch
        client.add_samples(x[pick], y[pick])
        await asyncio.sleep(period)


async def heartbeat(client: ClientNode, period: float, started: float) -> None:
    """The gateway's own health line, with how late its own timer fired (event-loop lag)."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    while True:
        due = loop.time() + period
        await asyncio.sleep(period)
        worst = max(worst, loop.time() - due)
        s = client.snapshot()
        print(f"[{time.monotonic() - started:6.1f}s] heartbeat: {s['n_samples']} samples held "
              f"({s['samples_seen']} seen), tier {s['tier']}, knowledge v{s['knowledge_version']}, "
              f"updates {s['updates_sent']} sent / {s['updates_accepted']} accepted, "
              f"worst timer lag {worst * 1000:.1f} ms", flush=True)


async def show_events(client: ClientNode, started: float) -> None:
    async for event in client.events():
        fields = {k: v for k, v in vars(event).items() if k not in ("node", "at")}
        print(f"[{time.monotonic() - started:6.1f}s] event {type(event).__name__} {fields}", flush=True)


@contextlib.asynccontextmanager
async def demo_federation(config: ClientConfig) -> AsyncIterator[str]:
    """An embedded broker and a server in this process (for trying the gateway out on one machine)."""
    async with EmbeddedBroker() as broker:
        server_config = ServerConfig(broker=broker.url, federation=config.federation, dataset="digits",
                                     seed=config.seed, distill_steps=10)
        async with ServerNode(server_config):
            yield broker.url


async def run_gateway(config: ClientConfig, *, seconds: float | None, sensor_period: float,
                      batch: int, heartbeat_period: float) -> dict[str, Any]:
    """Run the gateway until ``seconds`` pass or SIGINT/SIGTERM; returns the client's final snapshot."""
    from koala_async.learning.data import federate

    pool = federate("digits", config.seed, max(config.num_shards, 1), config.alpha).client(config.shard)
    started = time.monotonic()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with ClientNode(config) as client, asyncio.TaskGroup() as tasks:
            own = [tasks.create_task(sensor(client, pool.x, pool.y, sensor_period, batch), name="sensor"),
                   tasks.create_task(heartbeat(client, heartbeat_period, started), name="heartbeat"),
                   tasks.create_task(show_events(client, started), name="events")]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await stop.wait()
            for task in own:
                task.cancel()
        return client.snapshot()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    table: dict[str, Any] = {}
    text = None
    if args.config:
        data, text = read_toml(args.config)
        table = dict(data.get("client", data))
    if args.broker:
        table["broker"] = args.broker
    if args.id:
        table["node_id"] = args.id
    config = load_into(ClientConfig, table, source=args.config, text=text, prefix="client" if args.config else "")
    kwargs = {"seconds": args.seconds, "sensor_period": args.sensor_period, "batch": args.batch,
              "heartbeat_period": args.heartbeat}
    if not args.demo:
        return await run_gateway(config, **kwargs)
    async with demo_federation(config) as url:
        # the demo keeps no state on disk: it is a throwaway federation
        return await run_gateway(load_into(ClientConfig, {**table, "broker": url, "state_dir": None}), **kwargs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML file with a [client] table (see nodes/gateway.toml)")
    parser.add_argument("--broker", help="mqtt://HOST:PORT (overrides the config)")
    parser.add_argument("--id", help="node id (overrides the config)")
    parser.add_argument("--demo", action="store_true", help="run an embedded broker and a server here too")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: until Ctrl-C)")
    parser.add_argument("--sensor-period", type=float, default=0.5, help="seconds between sensor batches")
    parser.add_argument("--batch", type=int, default=8, help="samples per sensor batch")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="seconds between heartbeat lines")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    final = asyncio.run(main_async(args))
    print(f"gateway stopped: {final['updates_sent']} updates sent, {final['updates_accepted']} accepted, "
          f"{final['n_samples']} samples held of {final['samples_seen']} seen", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
