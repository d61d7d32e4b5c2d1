"""Play a scenario against real processes and a real broker, and report.

The runner starts the broker (embedded amqtt in this process, or an external URL), one OS process per
node, watches the federation over MQTT (the retained status topics), stops when every client has made
its updates and the server has settled (or the scenario's duration runs out), and always reaps every
process it started, also on Ctrl-C or an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from koala_async.core.envelope import Limits, Status, decode
from koala_async.core.topics import Topics
from koala_async.errors import KoalaError, MessageError
from koala_async.io.broker import EmbeddedBroker
from koala_async.io.transport import BrokerAddress, Transport
from koala_async.tools.display import RunView
from koala_async.tools.processes import NodeProcess, ProcessSet
from koala_async.tools.scenario import Scenario

log = logging.getLogger(__name__)


class Observer:
    """Collects what the federation says about itself on its status topics."""

    def __init__(self, topics: Topics, started: float) -> None:
        self.topics = topics
        self.started = started
        self.server: dict[str, Any] = {}
        self.server_online = False
        self.clients: dict[str, dict[str, Any]] = {}
        self.timeline: list[tuple[float, int, float]] = []
        self.last_version_change = time.monotonic()
        self.malformed = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def feed(self, topic: str, payload: bytes) -> None:
        try:
            msg = decode(payload, Limits())
        except MessageError:
            self.malformed += 1
            return
        if not isinstance(msg, Status):
            return
        if topic == self.topics.server_status:
            self.server_online = msg.online
            if not msg.info:
                return
            version = msg.info.get("version", 0)
            if version != self.server.get("version"):
                self.last_version_change = time.monotonic()
                acc = msg.info.get("test_accuracy")
                if isinstance(acc, float):
                    self.timeline.append((round(self.elapsed(), 3), version, acc))
            self.server = msg.info
        else:
            cid = self.topics.client_of(topic)
            if cid is not None:
                self.clients[cid] = {**self.clients.get(cid, {}), **msg.info, "online": msg.online,
                                     "state": msg.state}


async def _watch(transport: Transport, observer: Observer) -> None:
    async for msg in transport.messages():
        observer.feed(msg.topic, msg.payload)


def _finished(scenario: Scenario, observer: Observer, expected: dict[str, int]) -> bool:
    if not expected:
        return False
    for cid, target in expected.items():
        if observer.clients.get(cid, {}).get("updates_sent", 0) < target:
            return False
    sent = sum(c.get("updates_sent", 0) for c in observer.clients.values())
    srv = observer.server
    received = srv.get("accepted", 0) + sum(srv.get("rejected", {}).values())
    settled = time.monotonic() - observer.last_version_change >= scenario.federation.settle
    return received >= sent and srv.get("pending", 1) == 0 and settled


async def run_scenario(scenario: Scenario, *, report_path: str | None = None, quiet: bool = False,
                       workdir: str | None = None) -> tuple[dict[str, Any], int]:
    """Run ``scenario``; returns (report, exit code)."""
    started = time.monotonic()
    workpath = Path(workdir or tempfile.mkdtemp(prefix="koala-run-"))
    workpath.mkdir(parents=True, exist_ok=True)
    topics = Topics(scenario.federation.name)
    processes = ProcessSet()
    observer = Observer(topics, started)
    completed = False
    failure = ""
    async with AsyncExitStack() as stack:
        stack.callback(processes.close)
        if scenario.broker.kind == "embedded":
            broker = await stack.enter_async_context(EmbeddedBroker())
            url = broker.url
        else:
            assert scenario.broker.url is not None
            url = scenario.broker.url
        server_cfg = scenario.server_config(url)
        client_cfgs = scenario.client_configs(url)
        view = stack.enter_context(RunView(f"koala run {scenario.federation.name}", quiet=quiet))
        view.event(0, f"broker at {url}; work dir {workpath}")
        transport = await stack.enter_async_context(Transport(
            BrokerAddress.parse(url), f"koala-{scenario.federation.name}-runner",
            subscriptions=((topics.server_status, 1), (topics.all_client_status, 1))))
        tasks = await stack.enter_async_context(asyncio.TaskGroup())
        watcher = tasks.create_task(_watch(transport, observer))
        processes.add(NodeProcess("server", "server", server_cfg, workpath)).start()
        for cfg in client_cfgs:
            processes.add(NodeProcess(cfg["node_id"], "client", cfg, workpath)).start()
        view.event(observer.elapsed(), f"started server and {len(client_cfgs)} clients")
        expected = {c["node_id"]: c.get("max_updates", 0) for c in client_cfgs if c.get("max_updates", 0)}
        try:
            while observer.elapsed() < scenario.federation.duration:
                await asyncio.sleep(0.25)
                view.update(observer.elapsed(), observer.server, observer.clients)
                dead = [n for n in processes.nodes.values() if n.proc is not None and not n.alive]
                if dead:
                    node = dead[0]
                    failure = f"{node.name} exited with code {node.proc.returncode if node.proc else '?'}"
                    view.event(observer.elapsed(), failure + "\n" + node.tail(8))
                    break
                if _finished(scenario, observer, expected):
                    completed = True
                    break
            if not completed and not failure:
                failure = f"duration {scenario.federation.duration:.0f}s ran out before the run completed"
        finally:
            view.update(observer.elapsed(), observer.server, observer.clients)
            watcher.cancel()
            await asyncio.to_thread(processes.close)
        view.event(observer.elapsed(), "federation stopped; computing the local-only reference")
    from koala_async.tools.baselines import local_only

    # The local-only reference trains the tier each client reported (it may have chosen it: "auto").
    chosen = [{**c, "tier": observer.clients.get(c["node_id"], {}).get("tier") or c.get("tier")}
              for c in client_cfgs]
    local = await asyncio.to_thread(local_only, server_cfg, chosen)
    report = build_report(scenario, observer, local, time.monotonic() - started, completed, failure)
    if report_path:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(json.dumps(report, indent=2))
    return report, 0 if completed else 1


def build_report(scenario: Scenario, observer: Observer, local: dict[str, float], wall: float,
                 completed: bool, failure: str) -> dict[str, Any]:
    srv = observer.server
    clients = {cid: {k: c.get(k) for k in ("tier", "tier_reason", "n_samples", "updates_sent", "knowledge_version",
                                             "bytes_up", "bytes_down", "state")}
               | {"accepted": srv.get("accepted_by_client", {}).get(cid, 0),
                  "local_only_test_accuracy": local.get(cid)}
               for cid, c in sorted(observer.clients.items())}
    local_values = [v for v in local.values() if v == v]
    return {
        "scenario": scenario.source,
        "completed": completed,
        "failure": failure or None,
        "large_model": {"name": srv.get("large_model"), "test_accuracy": srv.get("test_accuracy", float("nan")),
                        "version": srv.get("version", 0), "timeline": observer.timeline,
                        "tier_trust": srv.get("tier_trust")},
        "local_only": {"mean_test_accuracy": sum(local_values) / len(local_values) if local_values else None,
                       "per_client": local},
        "updates": {"accepted": srv.get("accepted", 0), "rejected": srv.get("rejected", {}),
                    "sent": sum(c.get("updates_sent", 0) for c in observer.clients.values())},
        "staleness": {"mean": srv.get("staleness_mean", 0.0), "max": srv.get("staleness_max", 0)},
        "bytes": {"up": sum(c.get("bytes_up", 0) for c in observer.clients.values()),
                  "down": sum(c.get("bytes_down", 0) for c in observer.clients.values())},
        "clients": clients,
        "wall_seconds": round(wall, 2),
    }


__all__ = ["run_scenario", "build_report", "Observer", "KoalaError"]
