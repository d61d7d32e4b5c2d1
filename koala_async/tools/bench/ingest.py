"""Server ingest benchmark: how many client updates per second the real ServerNode verifies, decodes,
admits and queues, against the raw rate of the same broker and client library with nothing between.

Each round runs four phases (their order reverses from round to round) over one real broker process
(Mosquitto when installed, else the embedded amqtt), each on its own federation (so no persistent
session sees the other's messages):

- runtime: a real :class:`~koala_async.nodes.server.ServerNode` with ``ingest_only`` (no fusion or
  distillation, so the ingest path alone is measured) and ``acks = False`` subscribes; the benchmark
  polls its accepted count. This is the headline ``ratio``: verify, decode, admit and queue.
- runtime_acks: the same with ``acks = True`` (the server's default), which also publishes a QoS 1
  verdict per update back to its sender: ``ratio_with_acks``.
- raw: a plain aiomqtt subscriber on the same topic filter and QoS, counting messages from aiomqtt's
  iterator (``async for message in client.messages``).
- raw_drain: the same subscriber taking a burst from aiomqtt's queue after one wait on the iterator,
  as the runtime's transport does (the iterator costs a task and an ``asyncio.wait`` per message).

Both ratios divide by the faster raw subscriber of each round (``raw_best_rate``, a median over rounds).
In every phase, publisher processes (:mod:`koala_async.tools.bench.loadgen` ``burst``) connect many simulated
clients, pre-encode valid Updates (proxy-sized float16 logits, the server's proxy id, distinct
senders, increasing seqs) and publish them all at once on a go signal. A phase's rate is
``(N - 1) / (t_last - t_first)`` between the first and the N-th message the subscriber took in.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import aiomqtt

from koala_async.core.topics import Topics
from koala_async.errors import KoalaError
from koala_async.io.transport import BrokerAddress
from koala_async.tools.brokers import broker_process, find_mosquitto, wait_listening
from koala_async.tools.processes import NodeProcess, ProcessSet


@dataclass(frozen=True)
class IngestSettings:
    publishers: int = 2  # processes
    clients_per_publisher: int = 25  # simulated clients (MQTT connections) per process
    updates_per_client: int = 60
    rounds: int = 3  # each has a runtime and a raw phase, in alternating order; rates are medians
    broker: str = "auto"  # "auto" (Mosquitto when installed, else embedded), "mosquitto" or "embedded"
    phase_timeout: float = 180.0

    @property
    def messages(self) -> int:
        return self.publishers * self.clients_per_publisher * self.updates_per_client


def broker_kind(requested: str) -> str:
    if requested != "auto":
        return requested
    try:
        find_mosquitto()
        return "mosquitto"
    except KoalaError:
        return "embedded"


class _Phase:
    """Publisher processes for one phase, gated on a go file so every connection is up first."""

    def __init__(self, processes: ProcessSet, workdir: Path, name: str, settings: IngestSettings,
                 url: str, federation: str, proxy: dict[str, Any]) -> None:
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.go = self.dir / "go"
        self.nodes: list[NodeProcess] = []
        for i in range(settings.publishers):
            spec = {"broker": url, "federation": federation, "prefix": f"p{i}",
                    "clients": settings.clients_per_publisher, "updates": settings.updates_per_client,
                    "seed": i, "go_file": str(self.go), "ready_file": str(self.dir / f"ready-{i}"),
                    "result_file": str(self.dir / f"result-{i}.json"), **proxy}
            spec_path = self.dir / f"publisher-{i}.json"
            spec_path.write_text(json.dumps(spec))
            node = NodeProcess(f"{name}-pub{i}", "loadgen", {}, self.dir, argv=[
                sys.executable, "-m", "koala_async.tools.bench.loadgen", "burst", str(spec_path)])
            processes.add(node)
            processes.start(node.name)
            self.nodes.append(node)

    async def ready(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not all((self.dir / f"ready-{i}").exists() for i in range(len(self.nodes))):
                for node in self.nodes:
                    if not node.alive:
                        raise KoalaError(f"publisher {node.name} exited early:\n{node.tail(10)}")
                await asyncio.sleep(0.05)

    def start(self) -> None:
        self.go.write_text("go")

    async def results(self, timeout: float) -> dict[str, Any]:
        """Wait for the publishers to finish; their combined count and rate."""
        async with asyncio.timeout(timeout):
            while any(node.alive for node in self.nodes):
                await asyncio.sleep(0.05)
        records = []
        for i, node in enumerate(self.nodes):
            path = self.dir / f"result-{i}.json"
            if not path.exists():
                raise KoalaError(f"publisher {node.name} wrote no result:\n{node.tail(10)}")
            records.append(json.loads(path.read_text()))
        published = sum(r["published"] for r in records)
        seconds = max(r["seconds"] for r in records)
        return {"published": published, "publish_rate": published / seconds if seconds > 0 else None,
                "payload_bytes": sum(r["bytes"] for r in records) / max(published, 1)}


async def _measure(count: Callable[[], int], expected: int, timeout: float) -> tuple[float, float]:
    """Poll ``count()`` until it reaches ``expected``: the rate between the first and the last, and
    this process's CPU time per message over the same span (microseconds)."""
    first = last = None
    cpu_first = cpu_last = 0.0
    n = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                n = count()
                now = time.perf_counter()
                if first is None and n > 0:
                    first, cpu_first = now, time.process_time()
                if n >= expected:
                    last, cpu_last = now, time.process_time()
                    break
                await asyncio.sleep(0.002)
    except TimeoutError:
        raise KoalaError(f"the subscriber took in {n} of {expected} messages within {timeout:.0f}s") from None
    assert first is not None and last is not None
    return (expected - 1) / max(last - first, 1e-9), (cpu_last - cpu_first) / (expected - 1) * 1e6


async def _runtime_phase(processes: ProcessSet, workdir: Path, settings: IngestSettings, url: str,
                         round_no: int, acks: bool = False) -> dict[str, Any]:
    """The real server's ingest; with ``acks`` it also publishes a verdict per update (its default),
    which is more than the decode-validate-queue path the headline ratio measures."""
    from koala_async.nodes.server import ServerConfig, ServerNode

    side = "runtime_acks" if acks else "runtime"
    federation = f"ingest-{'rta' if acks else 'rt'}-{round_no}"
    config = ServerConfig(broker=url, federation=federation, ingest_only=True, status_interval=5.0, acks=acks)
    async with ServerNode(config) as server:
        await server.transport.wait_connected(30)
        learner: Any = server.learner  # a DistillLearner (ServerConfig's default mode)
        proxy = {"proxy_id": learner.proxy_id, "n_proxy": len(learner.proxy_x),
                 "num_classes": learner.spec.num_classes}
        phase = _Phase(processes, workdir, f"{side}-{round_no}", settings, url, federation, proxy)
        await phase.ready(60)
        phase.start()
        rate, cpu = await _measure(lambda: server.metrics.accepted + server.rejects.total,
                                   settings.messages, settings.phase_timeout)
        published = await phase.results(settings.phase_timeout)
        record = {f"{side}_rate": rate, f"{side}_cpu_us_per_message": cpu,
                  f"{side}_accepted": server.metrics.accepted,
                  f"{side}_rejected": dict(server.rejects.counts),
                  f"{side}_publish_rate": published["publish_rate"], "payload_bytes": published["payload_bytes"],
                  "proxy": proxy}
    return record


async def _raw_phase(processes: ProcessSet, workdir: Path, settings: IngestSettings, url: str,
                     round_no: int, proxy: dict[str, Any], drain: bool = False) -> dict[str, Any]:
    """A plain aiomqtt subscriber counting messages. With ``drain`` it waits on aiomqtt's iterator
    only for the first message of a burst and takes the rest straight from its queue, as the
    runtime's transport does; without, it uses the iterator for every message."""
    side = "raw_drain" if drain else "raw"
    federation = f"ingest-{side}-{round_no}"
    topics = Topics(federation)
    address = BrokerAddress.parse(url)
    received = 0
    inbox: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
    queue_type = cast("type[asyncio.Queue[aiomqtt.Message]]", lambda maxsize=0: inbox) if drain else None
    async with aiomqtt.Client(address.host, address.port, identifier=f"koala-bench-{side}-{round_no}",
                              clean_session=False, timeout=10, queue_type=queue_type) as client:
        await client.subscribe(topics.all_updates, qos=1)

        async def count() -> None:
            nonlocal received
            async for _ in client.messages:
                received += 1
                if drain:
                    while not inbox.empty():
                        inbox.get_nowait()
                        received += 1
                if received >= settings.messages:
                    return

        async with asyncio.TaskGroup() as tasks:
            counter = tasks.create_task(count())
            phase = _Phase(processes, workdir, f"{side}-{round_no}", settings, url, federation, proxy)
            await phase.ready(60)
            phase.start()
            try:
                rate, cpu = await _measure(lambda: received, settings.messages, settings.phase_timeout)
            finally:
                counter.cancel()
        published = await phase.results(settings.phase_timeout)
    return {f"{side}_rate": rate, f"{side}_cpu_us_per_message": cpu, f"{side}_received": received,
            f"{side}_publish_rate": published["publish_rate"]}


_SIDES = ("runtime", "raw", "runtime_acks", "raw_drain")


async def ingest_benchmark(settings: IngestSettings, workdir: Path) -> dict[str, Any]:
    """Run the benchmark; every process it starts is reaped before it returns."""
    kind = broker_kind(settings.broker)
    workdir.mkdir(parents=True, exist_ok=True)
    processes = ProcessSet()
    rounds: list[dict[str, Any]] = []
    try:
        node, url = broker_process(kind, workdir)
        processes.add(node)
        processes.start("broker")
        await asyncio.to_thread(wait_listening, BrokerAddress.parse(url).port, node)
        proxy: dict[str, Any] = {}
        for r in range(settings.rounds):
            # Alternate the order of the phases, so a machine that gets busier or quieter over the
            # run does not favour one side (round 0 starts with the runtime: it learns the proxy id).
            record: dict[str, Any] = {}
            for side in _SIDES if r % 2 == 0 else _SIDES[::-1]:
                if side.startswith("runtime"):
                    result = await _runtime_phase(processes, workdir, settings, url, r, acks=side == "runtime_acks")
                    proxy = result.pop("proxy")
                else:
                    result = await _raw_phase(processes, workdir, settings, url, r, proxy, drain=side == "raw_drain")
                record.update(result)
            # The baseline is the faster way of using the client library in this round.
            record["raw_best_rate"] = max(record["raw_rate"], record["raw_drain_rate"])
            rounds.append(record)
    finally:
        await asyncio.to_thread(processes.close)
    rates = {f"{side}_rate": statistics.median(r[f"{side}_rate"] for r in rounds)
             for side in (*_SIDES, "raw_best")}
    cpu = {f"{side}_cpu_us_per_message": statistics.median(r[f"{side}_cpu_us_per_message"] for r in rounds)
           for side in _SIDES}
    raw = rates["raw_best_rate"]
    return {"broker": kind, "settings": asdict(settings), "messages": settings.messages, **cpu, **rates,
            "payload_bytes": round(rounds[0]["payload_bytes"]), "rounds": rounds,
            "ratio": rates["runtime_rate"] / raw, "ratio_with_acks": rates["runtime_acks_rate"] / raw,
            "error": None}
