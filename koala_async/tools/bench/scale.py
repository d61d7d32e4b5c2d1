"""Scale run: as many client nodes as one machine holds, against a real ``koala server`` process over
Mosquitto (the embedded amqtt when Mosquitto is not installed).

The client count ramps in steps (50, 100, 200, 300, 400, 600, 800 by default). Each step starts one more
:mod:`koala_async.tools.bench.loadgen` ``steady`` process with the extra clients (many MQTT connections per
process), waits until all are connected (each read the retained proxy set), then holds for ``hold``
seconds. At the end of the hold it reads the server's retained status (``fuse_latency_recent``: the
server's own arrival-to-published latency over the last ``latency_window`` seconds, set to the hold)
and every load process's stats.

Counts reconcile: each lightweight client keeps its updates until the server's verdict (as a real
client does), so per step, over the whole run so far and at one instant per load process::

    published == accepted + rejected (by reason) + superseded + pending

and the server's own accepted count differs from the clients' only by the verdicts still in flight.
The hold's figures (``*_in_hold``) are differences of those counts between its start and its end.
The server's CPU over the hold is read from ``/proc`` (:mod:`koala_async.tools.bench.cpu`), split into
its event loop (main thread: ingest, verdicts, acks, status) and its learner threads, and divided by the
updates it accepted in the hold; the machine's busy share and load average say how shared it was.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from koala_async.core.envelope import Limits, Status, decode
from koala_async.core.topics import Topics
from koala_async.errors import KoalaError, MessageError
from koala_async.io.transport import BrokerAddress, MqttTransport
from koala_async.tools.bench.cpu import CpuSample, machine_cpu, process_cpu
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
    ack_timeout: float = 30.0  # a client republishes an update whose verdict is this late
    drain_timeout: float = 90.0  # at the end: how long clients may wait for their last verdicts
    # Scheduling priority (nice) of the load processes: they stand in for devices that would run on
    # their own CPUs, so they must not take the cores from the server they measure (as client_nice in
    # scenarios). Other programs on a shared machine still compete: the table shows the machine's load.
    load_nice: int = 10

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


COUNTS = ("connected", "published", "accepted", "superseded", "pending", "republished", "failures", "unconfirmed")


def _load_stats(paths: list[Path]) -> dict[str, Any]:
    """The load processes' stats summed: counts, and rejected by reason."""
    total: dict[str, Any] = {key: 0 for key in COUNTS}
    rejected: dict[str, int] = {}
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for key in COUNTS:
            total[key] += int(data.get(key, 0))
        for reason, n in (data.get("rejected") or {}).items():
            rejected[reason] = rejected.get(reason, 0) + int(n)
    total["rejected"] = rejected
    total["drained_all"] = bool(paths) and all(_drained(path) for path in paths)
    return total


def _drained(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return bool(data.get("draining")) and data.get("pending", 1) == 0 and data.get("unconfirmed", 1) == 0


def _step_record(target: int, connect_seconds: float, load0: dict[str, Any], load: dict[str, Any],
                 before: dict[str, Any], after: dict[str, Any], cpu: CpuSample, busy: float | None,
                 hold: float) -> dict[str, Any]:
    rejected = load["rejected"]
    accepted_in_hold = after.get("accepted", 0) - before.get("accepted", 0)
    per = (lambda seconds: round(1000 * seconds / accepted_in_hold, 3)) if accepted_in_hold else (lambda _: None)
    return {
        "clients": target, "connected": load["connected"], "connect_seconds": round(connect_seconds, 2),
        # the run so far, at the end of the hold: published == accepted + rejected + superseded + pending
        "published": load["published"], "accepted": load["accepted"], "rejected": rejected,
        "superseded": load["superseded"], "pending": load["pending"], "republished": load["republished"],
        "balanced": load["published"] == (load["accepted"] + sum(rejected.values()) + load["superseded"]
                                          + load["pending"]),
        "server_accepted": after.get("accepted", 0), "server_superseded": after.get("superseded", 0),
        "server_rejected": after.get("rejected", {}),
        # the hold alone
        "published_in_hold": load["published"] - load0["published"],
        "accepted_in_hold": accepted_in_hold,
        "arrivals_per_second": round(accepted_in_hold / hold, 2),
        "versions": after.get("version", 0) - before.get("version", 0),
        "fuse_latency": after.get("fuse_latency_recent") or {},
        "distill_steps_skipped": after.get("distill_steps_skipped"),
        "server_pending": after.get("pending"),
        "server_cpu_ms_per_arrival": per(cpu.total), "server_loop_cpu_ms_per_arrival": per(cpu.main),
        "server_learner_cpu_ms_per_arrival": per(cpu.others),
        "server_cpu_share": round(cpu.total / hold, 3), "machine_busy_share": None if busy is None else round(busy, 3),
        "load_average": round(os.getloadavg()[0], 2), "client_failures": load["failures"]}


async def scale_run(settings: ScaleSettings, workdir: Path) -> dict[str, Any]:
    """Ramp the client count; one record per step. Every process started is reaped before return."""
    kind = broker_kind(settings.broker)
    workdir.mkdir(parents=True, exist_ok=True)
    processes = ProcessSet()
    topics = Topics(FEDERATION)
    steps: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
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
                            "ack_timeout": settings.ack_timeout, "stop_file": str(workdir / "stop-load"),
                            "duration": 24 * 3600}  # reaped by the run; never ends on its own
                    (workdir / f"loadgen-{target}.spec.json").write_text(json.dumps(spec))
                    processes.add(NodeProcess(f"loadgen-{target}", "loadgen", {}, workdir, argv=[
                        sys.executable, "-m", "koala_async.tools.bench.loadgen", "steady",
                        str(workdir / f"loadgen-{target}.spec.json")], nice=settings.load_nice))
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
                    load0 = _load_stats(stats_files)
                    assert server.proc is not None
                    cpu0, machine0 = process_cpu(server.proc.pid), machine_cpu()
                    held_from = time.monotonic()
                    while time.monotonic() - held_from < settings.hold and server.alive:
                        await asyncio.sleep(0.5)
                    if not server.alive:
                        raise KoalaError(f"the server exited during step {target}:\n{server.tail(10)}")
                    cpu, busy = process_cpu(server.proc.pid) - cpu0, machine_cpu().busy_share(machine0)
                    held = time.monotonic() - held_from
                    after = await watch.fresh(time.monotonic(), 30.0)
                    steps.append(_step_record(target, connect_seconds, load0, _load_stats(stats_files), before,
                                              after, cpu, busy, held))
                final = await _drain(workdir / "stop-load", stats_files, watch, settings.drain_timeout)
            finally:
                watcher.cancel()
    except (KoalaError, TimeoutError) as exc:
        error = str(exc) or type(exc).__name__
    finally:
        await asyncio.to_thread(processes.close)
    return {"broker": kind, "settings": asdict(settings), "steps": steps, "final": final, "error": error,
            "workdir": str(workdir)}


async def _drain(stop_file: Path, stats_files: list[Path], watch: _ServerWatch, timeout: float) -> dict[str, Any]:
    """Stop the load: clients publish nothing new and leave once every update has its verdict. Then the
    clients' counts and the server's must agree exactly (``reconciled``)."""
    stop_file.touch()
    began = time.monotonic()
    load = _load_stats(stats_files)
    while time.monotonic() - began < timeout:
        await asyncio.sleep(1.0)
        load = _load_stats(stats_files)
        if load["drained_all"]:
            break
    server = await watch.fresh(time.monotonic() + 1.0, 30.0)  # a status from after the last verdict
    server_rejected = {k: v for k, v in (server.get("rejected") or {}).items() if k != "duplicate"}
    return {"drain_seconds": round(time.monotonic() - began, 2), "drained": load["drained_all"],
            "published": load["published"], "accepted": load["accepted"], "rejected": load["rejected"],
            "superseded": load["superseded"], "pending": load["pending"], "republished": load["republished"],
            "server_accepted": server.get("accepted", 0), "server_superseded": server.get("superseded", 0),
            "server_rejected": server_rejected,
            "server_duplicate_copies": (server.get("rejected") or {}).get("duplicate", 0),
            "reconciled": (load["accepted"] == server.get("accepted", 0)
                           and load["superseded"] == server.get("superseded", 0)
                           and load["rejected"] == server_rejected and load["pending"] == 0
                           and load["published"] == (load["accepted"] + sum(load["rejected"].values())
                                                     + load["superseded"]))}
