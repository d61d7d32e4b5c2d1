"""A flood of distinct client ids, as its own OS process: ``python -m koala_async.tools.bench.flood SPEC.json``.

``ids`` made-up client ids each publish a retained status (``online``, a small ``info``) and a valid
update (proxy-sized random float16 logits on the server's proxy set, built on the knowledge version
the flood last read from the retained knowledge topic) on their own topics, over ``connections``
MQTT connections with up to ``window`` QoS 1 publishes in flight each, at most ``rate`` messages a
second in all (0: as fast as the broker takes them), round after round (new sequence numbers every
round) until ``duration`` seconds have passed or ``rounds`` rounds are done.
Every second it rewrites ``SPEC.result.json``: messages published, rounds done, seconds, errors.

It measures nothing itself: the server it floods is watched from outside (:mod:`.hostile`,
:func:`~koala_async.tools.bench.hostile.flood_cadence`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

from koala_async.core.envelope import Knowledge, Status, Update, decode, encode
from koala_async.core.server_signing import open_sealed
from koala_async.core.topics import Topics
from koala_async.errors import MessageError
from koala_async.io.transport import BrokerAddress


def flood_messages(topics: Topics, sender: str, seq: int, version: int, proxy_id: str,
                   logits: np.ndarray) -> list[tuple[str, bytes, bool]]:
    """The (topic, payload, retain) a flooding id publishes in one round: its status, then an update."""
    status = Status(sender=sender, seq=seq, role="client", online=True, state="idle",
                    info={"tier": "image-small", "n_samples": 50}, sent_at=time.time())
    update = Update(sender=sender, seq=seq + 1, base_version=version, tier="image-small", n_samples=50,
                    proxy_id=proxy_id, logits=logits, sent_at=time.time())
    return [(topics.client_status(sender), encode(status), True), (topics.update(sender), encode(update), False)]


class _Version:
    """The latest knowledge version on the broker (read unverified: the flood only needs the number)."""

    def __init__(self) -> None:
        self.value = 0

    async def follow(self, address: BrokerAddress, topics: Topics) -> None:
        async with aiomqtt.Client(address.host, address.port, identifier="flood-reader") as client:
            await client.subscribe(topics.knowledge, qos=1)
            async for msg in client.messages:
                try:
                    message = decode(open_sealed(bytes(msg.payload), ()))  # type: ignore[arg-type]
                except MessageError:
                    continue
                if isinstance(message, Knowledge):
                    self.value = max(self.value, message.version)


async def flood(spec: dict[str, Any], result_path: Path | None = None) -> dict[str, Any]:
    topics = Topics(spec["federation"])
    address = BrokerAddress.parse(spec["broker"])
    rng = np.random.default_rng(spec.get("seed", 7))
    logits = [(rng.standard_normal((spec["n_proxy"], spec["num_classes"])) * 3).astype(np.float16)
              for _ in range(8)]
    ids = [f"{spec.get('prefix', 'flood')}-{i:05d}" for i in range(spec["ids"])]
    connections, window = spec.get("connections", 4), spec.get("window", 64)
    duration, rounds = spec.get("duration", 30.0), spec.get("rounds", 1_000_000)
    rate = spec.get("rate", 0) / connections  # messages a second, per connection
    stats = {"published": 0, "rounds": 0, "errors": 0, "seconds": 0.0, "ids": len(ids)}
    version = _Version()
    started = time.monotonic()
    seq0 = int(time.time() * 1000)

    def report() -> None:
        stats["seconds"] = round(time.monotonic() - started, 3)
        if result_path is not None:
            tmp = result_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(stats))
            tmp.replace(result_path)

    async def worker(part: int) -> None:
        async with aiomqtt.Client(address.host, address.port, identifier=f"flood-{part}", timeout=60,
                                  max_inflight_messages=window) as client:
            gate = asyncio.Semaphore(window)
            pending: set[asyncio.Task[None]] = set()
            sent = 0

            async def send(topic: str, payload: bytes, retain: bool) -> None:
                try:
                    await client.publish(topic, payload, qos=1, retain=retain)
                    stats["published"] += 1
                except aiomqtt.MqttError:
                    stats["errors"] += 1
                finally:
                    gate.release()

            for r in range(rounds):
                for i in range(part, len(ids), connections):
                    if time.monotonic() - started > duration:
                        break
                    for topic, payload, retain in flood_messages(topics, ids[i], seq0 + 4 * r, version.value,
                                                                 spec["proxy_id"], logits[i % len(logits)]):
                        sent += 1
                        if rate and (ahead := started + sent / rate - time.monotonic()) > 0:
                            await asyncio.sleep(ahead)
                        await gate.acquire()
                        task = asyncio.create_task(send(topic, payload, retain))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                if part == 0:
                    stats["rounds"] = r + 1
                if time.monotonic() - started > duration:
                    break
            if pending:
                await asyncio.wait(pending)

    async def reporter() -> None:
        while True:
            report()
            await asyncio.sleep(1.0)

    async with asyncio.TaskGroup() as tasks:
        follower = tasks.create_task(version.follow(address, topics))
        ticker = tasks.create_task(reporter())
        await asyncio.sleep(0.5)  # the retained knowledge arrives first
        await asyncio.gather(*(worker(p) for p in range(connections)))
        follower.cancel()
        ticker.cancel()
    report()
    return stats


def main(argv: list[str]) -> int:
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text())
    asyncio.run(flood(spec, spec_path.with_suffix(".result.json")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
