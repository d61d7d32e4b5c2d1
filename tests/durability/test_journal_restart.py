"""Crash-safe files, and a server that resumes its accepted-but-undistilled updates and its dedupe
window from the journal after a crash."""

from __future__ import annotations

import asyncio

import aiomqtt
import numpy as np
import pytest

from koala_async.core.envelope import Update, encode
from koala_async.core.topics import Topics
from koala_async.io.durable import Journal, atomic_write
from koala_async.io.transport import BrokerAddress
from koala_async.io.checkpoint import CHECKPOINT, ServerStore
from koala_async.nodes.server import ServerConfig, ServerNode


def test_atomic_write_replaces_whole_file(tmp_path) -> None:
    target = tmp_path / "state.bin"
    atomic_write(target, b"old")
    atomic_write(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]  # no temp file left behind


def test_journal_replays_intact_records_and_ignores_a_torn_tail(tmp_path) -> None:
    journal = Journal(tmp_path)
    for i in range(5):
        journal.append(f"record-{i}".encode())
    journal.close()
    segment = tmp_path / f"journal-{journal.segment:08d}.log"
    with open(segment, "ab") as handle:  # a crash in the middle of the sixth append
        handle.write(b"\x40\x00\x00\x00\x00\x00\x00\x00partial")
    reopened = Journal(tmp_path)
    assert list(reopened.replay()) == [f"record-{i}".encode() for i in range(5)]
    first_new = reopened.rotate()
    reopened.append(b"after")
    reopened.drop_before(first_new)
    assert list(reopened.replay()) == [b"after"]


def _update(server: ServerNode, sender: str, seq: int) -> Update:
    return Update(sender=sender, seq=seq, base_version=0, tier="t", n_samples=10, proxy_id=server.learner.proxy_id,
                  logits=np.random.default_rng(seq).normal(size=(len(server.learner.proxy_x), server.learner.spec.num_classes))
                  .astype(np.float16))


async def _send(url: str, topics: Topics, payloads: list[tuple[str, bytes]]) -> None:
    a = BrokerAddress.parse(url)
    async with aiomqtt.Client(a.host, a.port, identifier="sender") as client:
        for sender, payload in payloads:
            await client.publish(topics.update(sender), payload, qos=1)


async def _until(predicate, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


@pytest.mark.mosquitto
async def test_journal_replay_restores_accepted_pending_and_dedupe(mosquitto_broker, tmp_path,
                                                                   monkeypatch) -> None:
    config = ServerConfig(broker=mosquitto_broker, federation="jr", state_dir=str(tmp_path / "state"),
                          distill_steps=1, buffer_size=10_000, status_interval=0.5)
    topics = Topics("jr")
    # First life: no checkpoint ever completes (as if power went before the first one), so only the
    # journal remembers the accepted updates.
    monkeypatch.setattr(ServerStore, "write", lambda self, captured, learner: None)
    async with ServerNode(config) as first:
        await first.transport.wait_connected(10)
        payloads = [(f"c{i}", encode(_update(first, f"c{i}", 1))) for i in range(6)]
        await _send(mosquitto_broker, topics, payloads)
        await _until(lambda: first.metrics.accepted == 6)
    assert not (tmp_path / "state" / CHECKPOINT).exists()
    monkeypatch.undo()

    async with ServerNode(config) as second:
        assert second.metrics.accepted == 6
        assert second.metrics.accepted_by_client == {f"c{i}": 1 for i in range(6)}
        await second.transport.wait_connected(10)
        await _send(mosquitto_broker, topics, payloads)  # a QoS 1 redelivery of all of them
        await _until(lambda: second.rejects.counts["duplicate"] == 6)
        await _until(lambda: second.version >= 1)  # the replayed updates get distilled
        assert second.metrics.accepted == 6
    assert (tmp_path / "state" / CHECKPOINT).exists()

    async with ServerNode(config) as third:  # a clean shutdown checkpointed everything
        assert (third.version, third.metrics.accepted) == (second.version, 6)
        assert third.rejects.counts["duplicate"] == 6
        assert set(third.learner.fusion.contributions) == {f"c{i}" for i in range(6)}
