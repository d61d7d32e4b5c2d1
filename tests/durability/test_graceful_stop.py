"""SIGTERM to a real ``koala server`` holding a large backlog while every core is busy: it exits 0 within
a few seconds, and nothing it accepted is lost (each accepted update is pending or fused after restart).

Slow, real infrastructure: Mosquitto, two server process starts, two ``yes`` burners; about 40 s.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from koala_async.core.envelope import ProxyManifest, Status, Update, decode, encode
from koala_async.core.topics import Topics
from koala_async.io.transport import BrokerAddress
from koala_async.tools.processes import NodeProcess

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]
TOPICS = Topics("stop")
SENDERS = 1000
STOP_WITHIN = 5.0  # seconds from SIGTERM to exit


@pytest.fixture
def busy_cores() -> Iterator[None]:
    """One ``yes > /dev/null`` per core for the duration of the test (stopped by PID)."""
    import os

    burners = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for proc in burners:
            proc.kill()
            proc.wait(5)


class Seen:
    def __init__(self) -> None:
        self.proxy: ProxyManifest | None = None
        self.status: dict = {}
        self.statuses = 0

    def take(self, payload: bytes) -> None:
        message = decode(payload)
        if isinstance(message, ProxyManifest):
            self.proxy = message
        elif isinstance(message, Status) and message.online:
            self.status, self.statuses = message.info, self.statuses + 1


async def _watch(url: str, seen: Seen) -> None:
    a = BrokerAddress.parse(url)
    async with aiomqtt.Client(a.host, a.port, identifier="stop-watch") as client:
        await client.subscribe(TOPICS.proxy, qos=1)
        await client.subscribe(TOPICS.server_status, qos=1)
        async for msg in client.messages:
            seen.take(bytes(msg.payload))  # type: ignore[arg-type]


async def _flood(url: str, proxy: ProxyManifest) -> None:
    """One valid update from each of SENDERS distinct clients, as fast as the broker takes them."""
    a = BrokerAddress.parse(url)
    rng = np.random.default_rng(1)
    seq = int(time.time() * 1000)
    payloads = [(f"s{i:04d}", encode(Update(
        sender=f"s{i:04d}", seq=seq, base_version=0, tier="image-small", n_samples=30, proxy_id=proxy.proxy_id,
        logits=rng.normal(size=(proxy.shape[0], proxy.num_classes)).astype(np.float16)))) for i in range(SENDERS)]
    async with aiomqtt.Client(a.host, a.port, identifier="stop-flood") as client:
        for start in range(0, len(payloads), 200):
            await asyncio.gather(*(client.publish(TOPICS.update(s), p, qos=1) for s, p in payloads[start:start + 200]))


async def _until(predicate, timeout: float, what: str, server: NodeProcess) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; log:\n{server.tail(30)}")
        if not server.alive:
            raise AssertionError(f"the server exited while waiting for {what}; log:\n{server.tail(30)}")
        await asyncio.sleep(0.05)


def _senders(envelopes: list[bytes]) -> set[str]:
    return {decode(e).sender for e in envelopes}  # type: ignore[union-attr]


async def _stop(server: NodeProcess) -> tuple[int | None, float]:
    """SIGTERM; the exit code and the seconds it took."""
    signalled = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.proc is not None
    code = await asyncio.to_thread(server.proc.wait, 60)
    return code, time.monotonic() - signalled


def _assert_nothing_lost(state: Path) -> set[str]:
    """The checkpoint holds every sender's update, as pending or in the fusion; returns the fused senders."""
    from koala_async.io.checkpoint import CHECKPOINT, load_state

    saved = load_state(state / CHECKPOINT)
    assert saved["metrics"]["accepted"] == SENDERS
    fusion = saved["learner"]["fusion"]
    fused = {str(fusion[f"c/{j}/sender"]) for j in range(int(fusion["count"]))}
    missing = {f"s{i:04d}" for i in range(SENDERS)} - fused - _senders(saved["pending"])
    assert not missing, f"{len(missing)} accepted updates are neither pending nor fused"
    return fused


async def test_sigterm_with_a_backlog_on_busy_cores_exits_promptly_and_loses_nothing(
        mosquitto_broker: str, tmp_path: Path, busy_cores: None) -> None:
    state = tmp_path / "state"
    config = {"broker": mosquitto_broker, "federation": "stop", "state_dir": str(state), "threads": 1,
              # long versions: the backlog builds up behind a distillation that is still running
              "distill_steps": 400, "buffer_size": 1, "status_interval": 0.3,
              # every sender's contribution stays in the fusion, so "fused" can be checked sender by sender
              "max_contributions": 4 * SENDERS,
              "report_path": str(tmp_path / "report.json")}
    server = NodeProcess("server", "server", config, tmp_path)
    seen = Seen()
    try:
        server.start()
        async with asyncio.TaskGroup() as tasks:
            watch = tasks.create_task(_watch(mosquitto_broker, seen))
            await _until(lambda: seen.proxy is not None and seen.statuses > 0, 120, "the server", server)
            assert seen.proxy is not None
            await _flood(mosquitto_broker, seen.proxy)
            await _until(lambda: seen.status.get("accepted", 0) >= SENDERS and seen.status.get("pending", 0) >= 100,
                         60, f"{SENDERS} accepted with a backlog (status: {seen.status})", server)
            backlog = seen.status["pending"]
            code, took = await _stop(server)
            watch.cancel()
    finally:
        server.stop(grace=5)
    print(f"\nSIGTERM with {backlog} pending on busy cores: exit {code} after {took:.2f}s")
    assert code == 0, server.tail(40)
    assert took <= STOP_WITHIN, f"took {took:.1f}s to stop:\n{server.tail(40)}"
    fused = _assert_nothing_lost(state)

    # Restarted, it resumes with the same count and backlog; stopped again at once (its first batch
    # is the backlog), it is as quick, and still loses nothing.
    restarted = Seen()
    try:
        server.start()
        async with asyncio.TaskGroup() as tasks:
            watch = tasks.create_task(_watch(mosquitto_broker, restarted))
            await _until(lambda: restarted.statuses > 0, 120, "the restarted server", server)
            resumed = dict(restarted.status)
            code, took = await _stop(server)
            watch.cancel()
    finally:
        server.stop(grace=5)
    print(f"restarted with {resumed['pending']} pending ({len(fused)} fused); SIGTERM at once: exit {code} "
          f"after {took:.2f}s")
    assert resumed["accepted"] == SENDERS
    assert resumed["pending"] == SENDERS - len(fused)
    assert code == 0, server.tail(40)
    assert took <= STOP_WITHIN, f"took {took:.1f}s to stop:\n{server.tail(40)}"
    _assert_nothing_lost(state)
