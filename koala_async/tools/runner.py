"""Play a scenario against real processes and a real broker, and report.

The runner starts the broker as its own process (embedded amqtt via ``koala broker``, or Mosquitto;
or uses an external URL), one OS process per node, plays the scenario's timeline with real signals
(SIGTERM, SIGKILL, SIGSTOP/SIGCONT), restarts and TCP cuts, watches the federation over MQTT (the
retained status topics), checks the scenario's assertions, and always reaps every process it started,
also on Ctrl-C, an error or a failed assertion.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from koala_async.core.topics import Topics
from koala_async.errors import KoalaError
from koala_async.io.transport import BrokerAddress, MqttTransport, parse_brokers
from koala_async.tools.assertions import evaluate
from koala_async.tools.bench.stats import ratio, time_to_target
from koala_async.tools.brokers import broker_process, wait_listening
from koala_async.tools.display import RunView
from koala_async.tools.forkserver import ForkServer
from koala_async.tools.linkproxy import LinkProxy
from koala_async.tools.observer import Observer, watch
from koala_async.tools.processes import NodeProcess, ProcessSet, core_plan, node_env
from koala_async.tools.savings import measure_run_models, savings
from koala_async.tools.scenario import Scenario
from koala_async.tools.timeline import Event, Scheduler

log = logging.getLogger(__name__)


class Run:
    """The state of one run: its processes, link proxies, observer and event log."""

    def __init__(self, scenario: Scenario, processes: ProcessSet, observer: Observer, view: RunView,
                 proxies: dict[str, LinkProxy], broker_ports: dict[str, int]) -> None:
        self.scenario = scenario
        self.processes = processes
        self.observer = observer
        self.view = view
        self.proxies = proxies
        self.broker_ports = broker_ports  # broker process name -> its port (none for an external one)
        self.started_at: dict[str, float] = {}
        self.paused: set[str] = set()
        self.log: list[dict[str, Any]] = []
        self.last_event_at = 0.0

    def start(self, name: str) -> None:
        self.processes.start(name)
        self.started_at[name] = self.observer.elapsed()

    async def apply(self, event: Event) -> None:
        obs = self.observer
        node = self.processes.nodes.get(event.target)
        entry: dict[str, Any] = {"at": round(obs.elapsed(), 2), "scheduled": event.at, "action": event.action,
                                 "target": event.target, "origin": event.origin,
                                 "server_accepted": obs.server.get("accepted", 0),
                                 "server_version": obs.server.get("version", 0),
                                 "accepted_by_client": dict(obs.server.get("accepted_by_client", {})),
                                 "alive": sorted(n for n, p in self.processes.nodes.items()
                                                 if p.alive and p.role == "client" and n not in self.paused)}
        if node is None:
            entry["skipped"] = f"no such node {event.target!r}"
        elif event.action == "start":
            if node.alive:
                entry["skipped"] = "already running"
            else:
                self.start(event.target)
                if node.role == "broker" and event.target in self.broker_ports:
                    await asyncio.to_thread(wait_listening, self.broker_ports[event.target], node)
        elif event.action in ("stop", "kill"):
            node.expected_down = True
            self.paused.discard(event.target)
            if event.action == "stop":
                await asyncio.to_thread(node.stop)
            else:
                node.signal(signal.SIGKILL)
                await asyncio.to_thread(node.kill)
        elif event.action == "pause":
            node.signal(signal.SIGSTOP)
            self.paused.add(event.target)
        elif event.action == "resume":
            node.signal(signal.SIGCONT)
            self.paused.discard(event.target)
        elif event.action in ("cut", "restore"):
            proxy = self.proxies[event.target]
            proxy.cut() if event.action == "cut" else proxy.restore()
        self.log.append(entry)
        self.last_event_at = obs.elapsed()
        self.view.event(entry["at"], event.describe() + (f" [skipped: {entry['skipped']}]"
                                                         if "skipped" in entry else ""))

    def failure(self) -> str:
        """A node that died without the timeline asking for it."""
        for node in self.processes.nodes.values():
            if node.proc is not None and not node.alive and not node.expected_down:
                return f"{node.name} exited with code {node.proc.returncode}\n{node.tail(8)}"
        return ""

    def finished(self, expected: dict[str, int]) -> bool:
        obs, srv = self.observer, self.observer.server
        server = self.processes.nodes["server"]
        # The server must have spoken since it (re)started and since the timeline's last event.
        if not server.alive or obs.server_status_at < max(self.started_at.get("server", 0), self.last_event_at):
            return False
        for cid, target in expected.items():
            node = self.processes.nodes[cid]
            if not node.alive or cid in self.paused:
                continue
            fresh = obs.client_status_at.get(cid, -1) >= self.started_at.get(cid, 0)
            status = obs.clients.get(cid, {})
            # done: every update sent, and each judged by the server (none pending at the client)
            if not fresh or status.get("updates_sent", 0) < target or status.get("updates_pending", 0):
                return False
        # The server's counters must postdate every client's last word: a client reports "nothing
        # pending" once it has its verdict, which a server status read before then does not count.
        if obs.server_status_at < max((obs.client_status_at.get(cid, 0) for cid in expected), default=0):
            return False
        settled = time.monotonic() - obs.last_version_change >= self.scenario.federation.settle
        return srv.get("pending", 1) == 0 and settled


def _with_server_state(config: dict[str, Any], workpath: Path) -> dict[str, Any]:
    """Give the server a state directory in the run's work dir when its config has one (server
    checkpoints), so a restarted server process finds what the crashed one saved."""
    import dataclasses

    from koala_async.nodes.server import ServerConfig

    names = {f.name for f in dataclasses.fields(ServerConfig)}
    if "state_dir" in names and "state_dir" not in config:
        return {**config, "state_dir": str(workpath / "server-state")}
    return config


async def run_scenario(scenario: Scenario, *, report_path: str | None = None, quiet: bool = False,
                       workdir: str | None = None, plot_path: str | None = None,
                       local_reference: bool = True) -> tuple[dict[str, Any], int]:
    """Run ``scenario``; returns (report, exit code): 0 when it completed and every assertion held."""
    # Sizes and FLOPs of the large model and the tiers, for the report. Counted before anything starts
    # (and before the clock does): it warms the FLOPs cache the clients read as they start.
    measured = await asyncio.to_thread(measure_run_models, scenario.server_config(""), scenario.client_configs(""))
    started = time.monotonic()
    workpath = Path(workdir or tempfile.mkdtemp(prefix="koala-run-"))
    workpath.mkdir(parents=True, exist_ok=True)
    topics = Topics(scenario.federation.name)
    processes = ProcessSet()
    observer = Observer(topics, started)
    completed = False
    failure = ""
    fed = scenario.federation
    scheduler = Scheduler(scenario.timeline)
    plan = core_plan() if fed.pin_cores else None
    server_cpus, other_cpus = plan if plan is not None else (None, None)
    async with AsyncExitStack() as stack:
        stack.callback(processes.close)  # registered first: runs last, whatever happened
        view = stack.enter_context(RunView(f"koala run {fed.name}", quiet=quiet))
        # Nodes are forked from a process that has imported torch and the runtime once (tools/forkserver.py).
        launcher: ForkServer | None = ForkServer(node_env(workpath), other_cpus, workpath / "forkserver.log")
        processes.launcher = launcher
        broker_ports: dict[str, int] = {}
        if scenario.broker.kind == "external":
            assert scenario.broker.url is not None
            urls = [u.strip() for u in scenario.broker.url.split(",") if u.strip()]
        else:
            urls = []
            for name in scenario.broker.names:  # independent brokers; nodes fail over down the list
                node, one = broker_process(scenario.broker.kind, workpath, scenario.broker.mosquitto, name)
                node.cpus = other_cpus
                processes.add(node)
                broker_ports[name] = BrokerAddress.parse(one).port
                processes.start(name)
                await asyncio.to_thread(wait_listening, broker_ports[name], node)
                urls.append(one)
        url = ",".join(urls)  # a node config's broker: every URL, in failover order
        proxies: dict[str, LinkProxy] = {}
        for event in scenario.timeline:
            if event.action == "cut" and event.target not in proxies:  # cuts the link to the first broker
                proxies[event.target] = await stack.enter_async_context(
                    LinkProxy(BrokerAddress.parse(urls[0]).port))
        # amqtt speaks MQTT 3.1.1 only: nodes need not spend a timeout asking it for 5 first.
        protocol = {"mqtt_version": 4} if scenario.broker.kind == "embedded" else {}
        server_cfg = _with_server_state({**protocol, **scenario.server_config(url)}, workpath)
        # KOALA clients write their small model into the work dir: evaluated on the test split afterwards.
        client_cfgs = [{**protocol, **_model_out(c, workpath, fed.mode),
                        **({"broker": ",".join([proxies[c["node_id"]].url, *urls[1:]])}
                           if c["node_id"] in proxies else {})}
                       for c in scenario.client_configs(url)]
        if launcher is not None and not await asyncio.to_thread(launcher.wait_ready):
            view.event(observer.elapsed(), "fork server failed (see forkserver.log): nodes start as new processes")
            launcher.close()
            processes.launcher = launcher = None
        view.event(observer.elapsed(), f"{scenario.broker.kind} broker(s) at {url}; work dir {workpath}")
        transport = await stack.enter_async_context(MqttTransport(
            parse_brokers(urls), f"koala-{fed.name}-runner",
            subscriptions=((topics.server_status, 1), (topics.all_client_status, 1))))
        tasks = await stack.enter_async_context(asyncio.TaskGroup())
        watcher = tasks.create_task(watch(transport, observer))
        run = Run(scenario, processes, observer, view, proxies, broker_ports)
        if plan is not None:
            view.event(observer.elapsed(), f"server pinned to cores {sorted(server_cpus or ())}, "
                                           f"clients to {sorted(other_cpus or ())}")
        processes.add(NodeProcess("server", "server", server_cfg, workpath, cpus=server_cpus, launcher=launcher))
        run.start("server")
        first = set(scenario.initially_started())
        for cfg in client_cfgs:
            processes.add(NodeProcess(cfg["node_id"], "client", cfg, workpath, nice=fed.client_nice,
                                      cpus=other_cpus, launcher=launcher))
            if cfg["node_id"] in first:
                run.start(cfg["node_id"])
        view.event(observer.elapsed(), f"started server and {len(first)} of {len(client_cfgs)} clients")
        expected = {c["node_id"]: c.get("max_updates", 0) for c in client_cfgs if c.get("max_updates", 0)}
        try:
            while observer.elapsed() < fed.duration:
                for event in scheduler.due(observer.elapsed()):
                    await run.apply(event)
                await asyncio.sleep(min(0.25, fed.sample_every / 2))
                observer.sample(fed.sample_every)
                view.update(observer.elapsed(), observer.server, observer.clients,
                            online_processes=sum(1 for n in processes.nodes.values()
                                                 if n.role == "client" and n.alive and n.name not in run.paused))
                failure = run.failure()
                if failure:
                    view.event(observer.elapsed(), failure)
                    break
                if fed.until == "done" and scheduler.done and run.finished(expected):
                    completed = True
                    break
            else:
                if fed.until == "duration" and scheduler.done:
                    completed = True
            if not completed and not failure:
                failure = f"duration {fed.duration:.0f}s ran out before the run completed"
        finally:
            view.update(observer.elapsed(), observer.server, observer.clients)
            watcher.cancel()
        # Leaving the stack: the watcher's transport disconnects, then every process is reaped.
        view.event(observer.elapsed(), "federation stopped")
    local: dict[str, float] = {}
    from koala_async.tools.baselines import local_only, small_models

    small = await asyncio.to_thread(small_models, client_cfgs)
    if local_reference:
        # The local-only reference trains the tier each client reported (it may have chosen it: "auto"),
        # for as many epochs as it reported training.
        chosen = [{**c, "tier": observer.clients.get(c["node_id"], {}).get("tier") or c.get("tier")}
                  for c in client_cfgs]
        epochs = {cid: int(c["epochs_done"]) for cid, c in observer.clients.items() if c.get("epochs_done")}
        local = await asyncio.to_thread(local_only, server_cfg, chosen, epochs)
    report = build_report(scenario, observer, local, time.monotonic() - started, completed, failure, small)
    report["events"] = run.log
    report["savings"] = savings(measured, observer.server.get("large_model"),
                                [c.get("tier") for c in report["clients"].values()])
    report["assertions"] = [evaluate(a, scenario, observer, run.log) for a in scenario.assertions]
    report["pids"] = processes.pids()
    report["workdir"] = str(workpath)
    code = 0 if completed and all(a["passed"] for a in report["assertions"]) else 1
    report["exit_code"] = code
    if report_path:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(json.dumps(report, indent=2))
    if plot_path:
        from koala_async.tools.plot import plot_report

        plot_report(report, plot_path)
    return report, code


def _model_out(config: dict[str, Any], workpath: Path, mode: str) -> dict[str, Any]:
    """A KOALA client's config with ``model_out`` in the run's work dir (unless it names its own)."""
    from koala_async.core.modes import Mode

    if Mode.parse(mode).exchanges_weights or "model_out" in config:
        return config
    return {**config, "model_out": str(workpath / f"{config['node_id']}.small.safetensors")}


def _mean(values: dict[str, float]) -> float | None:
    finite = [v for v in values.values() if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def build_report(scenario: Scenario, observer: Observer, local: dict[str, float], wall: float,
                 completed: bool, failure: str, small: dict[str, float] | None = None) -> dict[str, Any]:
    srv = observer.server
    clients = {cid: {k: c.get(k) for k in CLIENT_FIELDS}
               | {"accepted": srv.get("accepted_by_client", {}).get(cid, 0),
                  "local_only_test_accuracy": local.get(cid), "small_model_test_accuracy": (small or {}).get(cid),
                  "bytes_per_update": _per_update(c.get("bytes_up", 0), c.get("updates_sent", 0))}
               for cid, c in sorted(observer.clients.items())}
    sent = sum(c.get("updates_sent", 0) for c in observer.clients.values())
    up = sum(c.get("bytes_up", 0) for c in observer.clients.values())
    target = scenario.federation.target_accuracy
    # A target is a choice: reached on validation where the server has one, never chosen on test.
    chosen = observer.validation_timeline or observer.timeline
    return {
        "scenario": scenario.source,
        "mode": scenario.federation.mode,
        "broker": scenario.broker.kind,
        "brokers": scenario.broker.count,
        "completed": completed,
        "failure": failure or None,
        "large_model": {"name": srv.get("large_model"), "test_accuracy": srv.get("test_accuracy", float("nan")),
                        "params": srv.get("large_model_params"), "device": srv.get("device"),
                        "weights": srv.get("large_weights"), "finetune": srv.get("finetune"),
                        "version": srv.get("version", 0), "timeline": observer.timeline,
                        "tier_trust": srv.get("tier_trust"), "target_accuracy": target,
                        "target_on": "validation" if observer.validation_timeline else "test",
                        "time_to_target": time_to_target(chosen, target),
                        "validation_timeline": observer.validation_timeline,
                        **{k: srv.get(k) for k in BEST_FIELDS},
                        # the server's latest accuracy at a fixed cadence (validation where it has it)
                        "grid": observer.grid, "sample_every": scenario.federation.sample_every,
                        "time_to_target_grid": time_to_target(observer.grid, target),
                        # when the server first reported (process start-up before it is not learning)
                        "first_report_at": observer.timeline[0][0] if observer.timeline else None},
        "local_only": {"mean_test_accuracy": _mean(local), "per_client": local},
        # each client's final small model on the same held-out test split (the other half of KOALA)
        "small_models": {"mean_test_accuracy": _mean(small or {}), "per_client": small or {}},
        "updates": {"accepted": srv.get("accepted", 0), "rejected": srv.get("rejected", {}),
                    "sent": sum(c.get("updates_sent", 0) for c in observer.clients.values())},
        "staleness": {"mean": srv.get("staleness_mean", 0.0), "max": srv.get("staleness_max", 0),
                      "max_seen": observer.staleness_max_seen, "histogram": srv.get("staleness_hist", {}),
                      # when fused (what the staleness rule weighs): see core/server_state.py
                      "fused_mean": srv.get("fused_staleness_mean"), "fused_max": srv.get("fused_staleness_max"),
                      "fused_histogram": srv.get("fused_staleness_hist", {})},
        "bytes": {"up": up, "down": sum(c.get("bytes_down", 0) for c in observer.clients.values()),
                  "per_update_mean": _per_update(up, sent)},
        "clients": clients,
        "samples": [{k: v for k, v in s.items() if k != "accepted_by_client"} for s in observer.samples],
        "wall_seconds": round(wall, 2),
    }


# The last version's validation score beside the best version's (chosen on validation; its test score
# reported): a run whose last version is worse than its best says so (last_below_best).
BEST_FIELDS = ("validation_accuracy", "best_version", "best_validation_accuracy", "best_test_accuracy",
               "last_below_best")

# Per client in the report: what it trained (for the bench: parameters, FLOPs, peak memory) and sent.
CLIENT_FIELDS = ("mode", "tier", "tier_reason", "n_samples", "updates_sent", "updates_accepted",
                 "updates_superseded", "updates_pending", "updates_republished", "knowledge_version", "bytes_up",
                 "bytes_down", "model_params", "train_flops_per_sample", "rss_peak_bytes", "state",
                 "epochs_done", "holdout_accuracy")


def _per_update(total: float, count: int) -> float | None:
    """Mean bytes per update, to a tenth of a byte (None when nothing was sent)."""
    mean = ratio(total, count)
    return None if mean is None else round(mean, 1)


__all__ = ["KoalaError", "Observer", "build_report", "run_scenario"]
