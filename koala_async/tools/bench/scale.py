"""Scale run: as many client nodes as one machine holds, against a real ``koala server`` process over
Mosquitto (the embedded amqtt when Mosquitto is not installed).

The client count ramps in steps (50, 100, 200, 300, 400, 600, 800 by default). Each step starts one more
:mod:`koala_async.tools.bench.loadgen` ``steady`` process with the extra clients (many MQTT connections per
process), waits until all are connected (each read the retained proxy set), then holds for ``hold``
seconds. At the end of the hold it reads the server's retained status: updates accepted during the
hold, and ``fuse_latency_recent`` (the server's own arrival-to-published latency over its last
``latency_window`` seconds, set to the hold), p50/p99/max.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from koala_async.core.envelope import Limits, Status, decode
from koala_async.core.topics import Topics
from koala_async.errors import KoalaError, MessageError
from koala_async.io.transport import BrokerAddress, MqttTransport
from koala_async.tools.bench.ingest import broker_kind
from koala_async.tools.brokers import broker_process, wait_listening
from koala_async.tools.processes import NodeProcess, ProcessSet

FEDERATION = "bench-scale"


@dataclass(frozen=True)
class ScaleSettings:
    steps: tuple[int, ...] = (50, 100, 200, 300, 400, 600, 800)
    hold: float = 45.0  # seconds each step runs once all its clients are connected
    interval: float = 40.0  # mean seconds between one client's updates ...
    jitter: float = 0.5  # ... uniform within interval * (1 +- jitter): 20-60 s by default
    distill_steps: int = 40
    max_distill_seconds: float | None = 0.1  # the server's per-version latency budget
    broker: str = "auto"
    connect_timeout: float = 90.0

    def __post_init__(self) -> None:
        if not self.steps or any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError("steps must be increasing client counts")
        if self.steps[0] < 1 or self.hold <= 0 or self.interval <= 0 or not 0 <= self.jitter < 1:
            raise ValueError("need steps >= 1, hold > 0, interval > 0 and 0 <= jitter < 1")


class _ServerWatch:
    """The latest retained server status, with the time it arrived."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.info: dict[str, Any] = {}
        self.at = 0.0

    async def run(self, transport: MqttTransport) -> None:
        async for msg in transport.messages():
            try:
                status = decode(msg.payload, Limits())
            except MessageError:
                continue
            if isinstance(status, Status) and status.info:
                self.info, self.at = dict(status.info), time.monotonic()

    async def fresh(self, after: float, timeout: float) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while self.at <= after:
                await asyncio.sleep(0.1)
        return self.info


def _load_stats(paths: list[Path]) -> dict[str, int]:
    total = {"connected": 0, "published": 0, "failures": 0}
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for key in total:
            total[key] += int(data.get(key, 0))
    return total


async def scale_run(settings: ScaleSettings, workdir: Path) -> dict[str, Any]:
    """Ramp the client count; one record per step. Every process started is reaped before return."""
    kind = broker_kind(settings.broker)
    workdir.mkdir(parents=True, exist_ok=True)
    processes = ProcessSet()
    topics = Topics(FEDERATION)
    steps: list[dict[str, Any]] = []
    error = None
    try:
        broker, url = broker_process(kind, workdir)
        processes.add(broker)
        processes.start("broker")
        await asyncio.to_thread(wait_listening, BrokerAddress.parse(url).port, broker)
        server_cfg = {"broker": url, "federation": FEDERATION, "dataset": "digits", "threads": 1,
                      "distill_steps": settings.distill_steps, "latency_window": settings.hold,
                      "status_interval": 1.0, "max_distill_seconds": settings.max_distill_seconds}
        server = processes.add(NodeProcess("server", "server", server_cfg, workdir))
        processes.start("server")
        watch = _ServerWatch(topics)
        async with MqttTransport(BrokerAddress.parse(url), "koala-bench-scale-watch",
                             subscriptions=((topics.server_status, 1),)) as transport, \
                asyncio.TaskGroup() as tasks:
            watcher = tasks.create_task(watch.run(transport))
            try:
                await watch.fresh(0.0, 180.0)
                stats_files: list[Path] = []
                previous = 0
                for target in settings.steps:
                    stats_file = workdir / f"loadgen-{target}.json"
                    spec = {"broker": url, "federation": FEDERATION, "prefix": f"s{target}",
                            "clients": target - previous, "interval": settings.interval,
                            "jitter": settings.jitter, "seed": target, "stats_file": str(stats_file),
                            "duration": 24 * 3600}  # reaped by the run; never ends on its own
                    (workdir / f"loadgen-{target}.spec.json").write_text(json.dumps(spec))
                    processes.add(NodeProcess(f"loadgen-{target}", "loadgen", {}, workdir, argv=[
                        sys.executable, "-m", "koala_async.tools.bench.loadgen", "steady",
                        str(workdir / f"loadgen-{target}.spec.json")]))
                    processes.start(f"loadgen-{target}")
                    stats_files.append(stats_file)
                    previous = target
                    began = time.monotonic()
                    while _load_stats(stats_files)["connected"] < target:
                        if time.monotonic() - began > settings.connect_timeout or not server.alive:
                            break
                        await asyncio.sleep(0.5)
                    connect_seconds = time.monotonic() - began
                    before = await watch.fresh(time.monotonic(), 30.0)
                    sent_before = _load_stats(stats_files)["published"]
                    held_from = time.monotonic()
                    while time.monotonic() - held_from < settings.hold and server.alive:
                        await asyncio.sleep(0.5)
                    if not server.alive:
                        raise KoalaError(f"the server exited during step {target}:\n{server.tail(10)}")
                    after = await watch.fresh(time.monotonic(), 30.0)
                    load = _load_stats(stats_files)
                    steps.append({
                        "clients": target, "connected": load["connected"],
                        "connect_seconds": round(connect_seconds, 2),
                        "published": load["published"] - sent_before,
                        "accepted": after.get("accepted", 0) - before.get("accepted", 0),
                        "versions": after.get("version", 0) - before.get("version", 0),
                        "fuse_latency": after.get("fuse_latency_recent") or {},
                        "distill_steps_skipped": after.get("distill_steps_skipped"),
                        "pending": after.get("pending"), "rejected": after.get("rejected", {}),
                        "client_failures": load["failures"]})
            finally:
                watcher.cancel()
    except (KoalaError, TimeoutError) as exc:
        error = str(exc) or type(exc).__name__
    finally:
        await asyncio.to_thread(processes.close)
    return {"broker": kind, "settings": asdict(settings), "steps": steps, "error": error,
            "workdir": str(workdir)}
