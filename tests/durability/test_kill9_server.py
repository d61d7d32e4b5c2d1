"""Pull the plug on the server mid-distillation: after a restart it resumes at no lower version and
accepted count than it had published before the kill."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time

import aiomqtt
import numpy as np
import pytest

from koala_async.core.envelope import Knowledge, ProxyManifest, Status, Update, decode, encode
from koala_async.core.topics import Topics
from koala_async.io.transport import BrokerAddress
from koala_async.tools.processes import NodeProcess

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]
TOPICS = Topics("dur")


class Watcher:
    """What the server has published: the highest version and accepted count, and its presence."""

    def __init__(self) -> None:
        self.proxy: ProxyManifest | None = None  # the proxy set's manifest: its id and size
        self.version = 0
        self.best = {"version": 0, "accepted": 0}
        self.lost = 0  # last wills seen (online=False, state lost)
        self.after_loss: list[dict] = []  # online statuses published after the latest last will

    def see(self, topic: str, payload: bytes) -> None:
        message = decode(payload)
        if isinstance(message, ProxyManifest):
            self.proxy = message
        elif isinstance(message, Knowledge):
            self.version = max(self.version, message.version)
            self.best["version"] = max(self.best["version"], message.version)
        elif isinstance(message, Status) and topic == TOPICS.server_status:
            if not message.online:
                self.lost += message.state == "lost"
                self.after_loss = []
            else:
                self.after_loss.append(message.info)
                for key in ("version", "accepted"):
                    self.best[key] = max(self.best[key], message.info[key])


async def _watch(url: str, watcher: Watcher) -> None:
    a = BrokerAddress.parse(url)
    async with aiomqtt.Client(a.host, a.port, identifier="watcher") as client:
        for topic in (TOPICS.proxy, TOPICS.knowledge, TOPICS.server_status):
            await client.subscribe(topic, qos=1)
        async for msg in client.messages:
            watcher.see(msg.topic.value, bytes(msg.payload))


async def _feed(url: str, watcher: Watcher) -> None:
    """Five clients' worth of valid updates, a few per second, built on the latest knowledge."""
    a = BrokerAddress.parse(url)
    rng = np.random.default_rng(0)
    while watcher.proxy is None:
        await asyncio.sleep(0.05)
    proxy = watcher.proxy
    async with aiomqtt.Client(a.host, a.port, identifier="feeder") as client:
        for seq in itertools.count(1):
            sender = f"c{seq % 5}"
            update = Update(sender=sender, seq=seq, base_version=watcher.version, tier="t", n_samples=40,
                            proxy_id=proxy.proxy_id,
                            logits=rng.normal(size=(proxy.shape[0], proxy.num_classes)).astype(np.float16))
            await client.publish(TOPICS.update(sender), encode(update), qos=1)
            await asyncio.sleep(0.1)


async def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_kill_9_mid_distillation_then_resume(mosquitto_broker, tmp_path) -> None:
    config = {"broker": mosquitto_broker, "federation": "dur", "state_dir": str(tmp_path / "state"),
              "distill_steps": 200, "buffer_size": 1, "status_interval": 0.3, "threads": 1}
    server = NodeProcess("server", "server", config, tmp_path)
    watcher = Watcher()
    try:
        server.start()
        async with asyncio.TaskGroup() as tasks:
            watch = tasks.create_task(_watch(mosquitto_broker, watcher))
            feed = tasks.create_task(_feed(mosquitto_broker, watcher))
            await _until(lambda: watcher.best["version"] >= 3 and watcher.best["accepted"] >= 10, 120,
                         f"the server to make progress; log:\n{server.tail()}")
            server.signal(signal.SIGKILL)  # no shutdown handler runs: a power cut
            assert server.proc is not None
            server.proc.wait(10)
            await _until(lambda: watcher.lost >= 1, 30, "the broker to publish the server's last will")
            published = dict(watcher.best)
            server.start()
            await _until(lambda: bool(watcher.after_loss), 120, f"the restarted server; log:\n{server.tail()}")
            resumed = watcher.after_loss[0]
            # Keep feeding a little: the restarted server keeps learning and deduplicating.
            await _until(lambda: len(watcher.after_loss) >= 3, 30, "more status from the restarted server")
            latest = watcher.after_loss[-1]
            feed.cancel()
            watch.cancel()
    finally:
        code = server.stop(grace=20)
    print(f"\npublished before kill -9: {published}; first status after restart: version "
          f"{resumed['version']}, accepted {resumed['accepted']}; later: {latest['version']}, "
          f"{latest['accepted']}")
    assert resumed["version"] >= published["version"]
    assert resumed["accepted"] >= published["accepted"]
    assert latest["accepted"] >= resumed["accepted"]
    assert code == 0, server.tail(40)
