"""Load generators for the benchmarks, each run as its own OS process so it never shares the measured
subscriber's event loop: ``python -m koala_async.tools.bench.loadgen {burst|steady} SPEC.json``.

- ``burst``: ``clients`` simulated clients, one MQTT connection each, pre-encode ``updates`` valid
  Update messages apiece (proxy-sized float16 logits, the server's proxy id, increasing seqs), write a
  ready file once all are connected, wait for the go file, publish everything at QoS 1 as fast as the
  broker acknowledges, and write a result file (published count, seconds).
- ``steady``: ``clients`` lightweight clients, one connection each, read the retained proxy set and
  knowledge like a real client, then publish precomputed logits as valid Updates built on the latest
  knowledge version every ``interval`` seconds (uniform jitter of +-``jitter``) until ``duration``
  ends. Each keeps its updates in a :class:`~koala_async.core.delivery.DeliveryLedger` until the
  server's verdict on its ack topic, as a real client's outbox does (republished after
  ``ack_timeout``, superseded by the next update), so a stats file rewritten every second says, per
  process at one instant: published = accepted + rejected by reason + superseded + pending. Once
  ``stop_file`` exists the clients publish nothing new and leave as soon as every update they published
  has its verdict (``drained`` in the stats), so a run can end with exact counts at both ends.

The logits are random, not trained: these processes load the server's ingest and fusion path, not its
learning quality.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

from koala_async.core.delivery import DeliveryLedger
from koala_async.core.envelope import Ack, Knowledge, Limits, ProxyManifest, Update, decode, encode
from koala_async.core.topics import Topics
from koala_async.errors import MessageError
from koala_async.io.transport import BrokerAddress


def fake_logits(rng: np.random.Generator, n_proxy: int, num_classes: int) -> np.ndarray:
    """Proxy-sized float16 logits: (n_proxy, num_classes), a plausible spread of a small model's."""
    return (rng.standard_normal((n_proxy, num_classes)) * 3).astype(np.float16)


def update_payload(sender: str, seq: int, base_version: int, proxy_id: str, logits: np.ndarray,
                   n_samples: int = 100, tier: str = "image-small", supersedes: tuple[int, ...] = ()) -> bytes:
    """One valid, encoded Update message on the whole proxy set."""
    return encode(Update(sender=sender, seq=seq, base_version=base_version, tier=tier, n_samples=n_samples,
                         proxy_id=proxy_id, logits=logits, sent_at=time.time(), supersedes=supersedes))


def _client(spec: dict[str, Any], client_id: str) -> aiomqtt.Client:
    address = BrokerAddress.parse(spec["broker"])
    return aiomqtt.Client(address.host, address.port, identifier=client_id, keepalive=60, timeout=30)


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


# -- burst -------------------------------------------------------------------------------------------

async def burst(spec: dict[str, Any]) -> dict[str, Any]:
    """Connect, pre-encode, wait for the go file, publish every update; returns the result record."""
    topics = Topics(spec["federation"])
    rng = np.random.default_rng(spec.get("seed", 0))
    senders = [f"{spec['prefix']}-{i}" for i in range(spec["clients"])]
    payloads = {s: [update_payload(s, seq, 0, spec["proxy_id"],
                                   fake_logits(rng, spec["n_proxy"], spec["num_classes"]))
                    for seq in range(1, spec["updates"] + 1)] for s in senders}
    go = Path(spec["go_file"])
    published = 0

    async def one(sender: str, client: aiomqtt.Client) -> None:
        nonlocal published
        topic = topics.update(sender)
        for payload in payloads[sender]:
            await client.publish(topic, payload, qos=1)
            published += 1

    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(_client(spec, f"bench-{s}")) for s in senders]
        _write_json(spec["ready_file"], {"clients": len(clients)})
        while not go.exists():
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for sender, client in zip(senders, clients, strict=True):
                tasks.create_task(one(sender, client))
        seconds = time.perf_counter() - started
    return {"published": published, "seconds": seconds,
            "bytes": sum(len(p) for ps in payloads.values() for p in ps)}


# -- steady ------------------------------------------------------------------------------------------

class SteadyStats:
    """What a steady load process reports: how many clients are connected, and their ledgers' counts."""

    def __init__(self) -> None:
        self.connected = 0
        self.failures = 0
        self.bad_messages = 0
        self.last_error = ""
        self.ledgers: list[DeliveryLedger] = []
        self.draining = False  # the stop file appeared: verdicts only, nothing new
        self.drained = 0  # clients that left with a verdict on everything they published

    def as_dict(self) -> dict[str, Any]:
        rejected: Counter[str] = Counter()
        for ledger in self.ledgers:
            rejected.update(ledger.rejected)
        total = {key: sum(getattr(ledger, key) for ledger in self.ledgers)
                 for key in ("sent", "accepted", "superseded", "republished")}
        return {"connected": self.connected, "published": total["sent"], "accepted": total["accepted"],
                "rejected": dict(rejected), "superseded": total["superseded"],
                "republished": total["republished"],
                "pending": sum(ledger.pending is not None for ledger in self.ledgers),
                "unconfirmed": sum(ledger.unconfirmed for ledger in self.ledgers),
                "draining": self.draining, "drained": self.drained,
                "failures": self.failures, "bad_messages": self.bad_messages, "last_error": self.last_error,
                "at": time.time()}


async def _steady_client(spec: dict[str, Any], sender: str, stats: SteadyStats, deadline: float,
                         rng: random.Random) -> None:
    topics = Topics(spec["federation"])
    limits = Limits()
    interval, jitter = float(spec["interval"]), float(spec.get("jitter", 0.5))
    ledger = DeliveryLedger(float(spec.get("ack_timeout", 30.0)))
    stats.ledgers.append(ledger)
    logits: np.ndarray | None = None
    proxy_id, version, seq = "", 0, 0
    connected = False
    ack_topic = topics.ack(sender)
    try:
        async with _client(spec, f"bench-{sender}") as client:
            for topic in (topics.proxy, topics.knowledge, ack_topic):
                await client.subscribe(topic, qos=1)
            next_at = time.monotonic() + rng.uniform(0, interval)  # spread the first updates out
            while time.monotonic() < deadline:
                now = time.monotonic()
                if stats.draining:
                    if ledger.pending is None and ledger.unconfirmed == 0:
                        stats.drained += 1
                        break
                    next_at = deadline
                if proxy_id and now >= next_at:
                    carried = ledger.supersede()
                    seq += 1
                    payload = update_payload(sender, seq, version, proxy_id, logits,  # type: ignore[arg-type]
                                             supersedes=carried)
                    ledger.published(seq, payload, now)
                    await client.publish(topics.update(sender), payload, qos=1)
                    next_at = time.monotonic() + interval * rng.uniform(1 - jitter, 1 + jitter)
                overdue = ledger.due(time.monotonic())
                if overdue is not None:
                    await client.publish(topics.update(sender), overdue.payload, qos=1)
                wake = min(next_at, deadline, ledger.next_deadline() or deadline)
                wait = max(0.01, wake - time.monotonic()) if proxy_id and not stats.draining else 1.0
                try:
                    async with asyncio.timeout(wait):
                        message = await anext(aiter(client.messages))
                except TimeoutError:
                    continue
                try:
                    decoded = decode(bytes(message.payload), limits)  # type: ignore[arg-type]
                except MessageError:
                    stats.bad_messages += 1
                    continue
                if isinstance(decoded, Ack):
                    ledger.verdict(decoded.update_seq, decoded.accepted, decoded.reason)
                elif isinstance(decoded, ProxyManifest) and decoded.proxy_id != proxy_id:
                    proxy_id = decoded.proxy_id  # the manifest says all a fake client needs: no chunk fetched
                    # Precomputed once per proxy set: this client's "model output".
                    logits = fake_logits(np.random.default_rng(rng.randrange(2**32)), decoded.shape[0],
                                         decoded.num_classes)
                    if not connected:
                        connected = True
                        stats.connected += 1
                elif isinstance(decoded, Knowledge):
                    version = max(version, decoded.version)
    except aiomqtt.MqttError as exc:
        stats.failures += 1
        stats.last_error = str(exc)
    finally:
        if connected:
            stats.connected -= 1


async def steady(spec: dict[str, Any]) -> None:
    """Run ``clients`` lightweight clients until ``duration`` seconds have passed."""
    stats = SteadyStats()
    deadline = time.monotonic() + float(spec["duration"])
    rng = random.Random(spec.get("seed", 0))

    stop_file = Path(spec["stop_file"]) if spec.get("stop_file") else None

    async def report() -> None:
        while True:
            if stop_file is not None and stop_file.exists():
                stats.draining = True
            _write_json(spec["stats_file"], stats.as_dict())
            await asyncio.sleep(1.0)

    async with asyncio.TaskGroup() as tasks:
        reporter = tasks.create_task(report())
        async with asyncio.TaskGroup() as clients:
            for i in range(spec["clients"]):
                clients.create_task(_steady_client(spec, f"{spec['prefix']}-{i}", stats, deadline,
                                                   random.Random(rng.random())))
                await asyncio.sleep(0.005)  # a ramp, not a thundering herd of CONNECTs
        reporter.cancel()
    _write_json(spec["stats_file"], stats.as_dict())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("burst", "steady"):
        print("usage: python -m koala_async.tools.bench.loadgen {burst|steady} SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[1]).read_text())
    if args[0] == "burst":
        result = asyncio.run(burst(spec))
        _write_json(spec["result_file"], result)
    else:
        asyncio.run(steady(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
