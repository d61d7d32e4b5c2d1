"""A client obtains the proxy set on the in-memory transport: chunk by chunk on a link of its own,
resuming with only the missing chunks after a drop or a restart, refusing bad chunks by reason, or
from a local file checked against the server's proxy id; and a whole federation on a uint8 proxy set
with server-scheduled subsets. No sockets; each test takes well under a few seconds of wall time but
the last (a small federation on MNIST digits, about 10 s on a loaded 2-core box)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from waiting import wait_for

from koala_async.core.envelope import Ack, Knowledge, ProxySet, Update, decode, encode
from koala_async.core.knowledge_gate import KnowledgeGate
from koala_async.core.proxy_manifest import ProxyManifest, array_bytes, build_manifest, chunks
from koala_async.core.rejects import RejectCounter
from koala_async.core.tiering import TierPolicy
from koala_async.core.topics import Topics
from koala_async.errors import DataError
from koala_async.io.base import Incoming, LinkOptions
from koala_async.io.memory import MemoryBroker, MemoryTransport
from koala_async.nodes.client import ClientConfig, ClientNode, TrainSettings
from koala_async.nodes.proxy_sync import FetchLink, ProxySync
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(90)
TOPICS = Topics("default")
FETCH_ID = "c0-proxy"
PIXELS = np.random.default_rng(3).integers(0, 256, size=(200, 3, 32, 32), dtype=np.uint8)  # 614,400 bytes
CHUNK = 64 * 1024  # 10 chunks


class Recorder:
    """The broker's factory, remembering what each link subscribed to."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.subscribed: list[list[str]] = []

    def __call__(self, options: LinkOptions) -> MemoryTransport:
        self.subscribed.append([topic for topic, _ in options.subscriptions])
        return self.broker.factory(options)


def chunk_payloads(m: ProxyManifest, x: np.ndarray = PIXELS) -> dict[int, tuple[str, bytes]]:
    return {c.index: (TOPICS.proxy_chunk(m.proxy_id, c.index), encode(c))
            for c in chunks(m, array_bytes(x), "server")}


async def publish(broker: MemoryBroker, items: list[tuple[str, bytes]]) -> None:
    async with broker.factory(LinkOptions("server-probe")) as link:
        for topic, payload in items:
            await link.publish(topic, payload, retain=True)


@contextlib.asynccontextmanager
async def running(sync: ProxySync, factory, rejects: RejectCounter,
                  adopted: list[ProxySet]) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(sync.run(FetchLink(factory, FETCH_ID), KnowledgeGate("server"), rejects,
                                        adopted.append))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_after_a_dropped_link_only_the_missing_chunks_are_fetched_and_bad_ones_are_counted() -> None:
    broker = MemoryBroker()
    recorder = Recorder(broker)
    m = build_manifest(PIXELS, 10, CHUNK, "server")
    payloads = chunk_payloads(m)
    late = (2, 5, 9)  # not on the broker yet when the client starts
    await publish(broker, [payloads[i] for i in range(m.n_chunks) if i not in late])
    sync, rejects, adopted = ProxySync(ClientConfig(node_id="c0"), TOPICS), RejectCounter(logging.getLogger()), []
    async with running(sync, recorder, rejects, adopted):
        sync.want(m)
        await wait_for(lambda: sync.assembly is not None and sync.assembly.received == 7, 5, "7 chunks")
        broker.drop(FETCH_ID)  # the link dies mid-transfer
        await wait_for(lambda: len(recorder.subscribed) == 2 and FETCH_ID in broker.connected_clients(), 5,
                       "a new fetch link")
        sync.want(dataclasses.replace(m, seq=99))  # the main link's reconnect re-delivers the manifest
        tampered = bytearray(payloads[5][1])
        tampered[-1] ^= 0xFF
        await publish(broker, [(payloads[5][0], bytes(tampered))])  # corrupted in transit, or forged
        await publish(broker, [payloads[i] for i in late])
        await wait_for(lambda: bool(adopted), 5, "the assembled proxy set")
        await wait_for(lambda: FETCH_ID not in broker.connected_clients(), 5, "the fetch link closed")
    assert np.array_equal(adopted[0].inputs, PIXELS) and adopted[0].inputs.dtype == np.uint8
    assert adopted[0].proxy_id == m.proxy_id and len(adopted) == 1
    # the second link asked for the three missing chunks only, and nothing came twice
    assert recorder.subscribed[1] == [TOPICS.proxy_chunk(m.proxy_id, i) for i in late]
    assert len(recorder.subscribed) == 2 and sync.links == 2
    stats = sync.stats()
    assert stats["proxy_chunks_fetched"] == m.n_chunks == 10 and stats["proxy_chunks_missing"] == 0
    assert stats["proxy_chunks_refused"] == {"bad_chunk_hash": 1}
    assert dict(rejects.counts) == {"bad_chunk_hash": 1}
    assert sync.bytes_in == sum(len(p) for _, p in payloads.values()) + len(tampered)


async def test_a_restarted_client_resumes_from_its_state_directory(tmp_path: Path) -> None:
    broker = MemoryBroker()
    m = build_manifest(PIXELS, 10, CHUNK, "server")
    payloads = chunk_payloads(m)
    await publish(broker, [payloads[i] for i in range(6)])
    config = ClientConfig(node_id="c0", state_dir=str(tmp_path))
    first, rejects, adopted = ProxySync(config, TOPICS), RejectCounter(logging.getLogger()), []
    async with running(first, broker.factory, rejects, adopted):
        first.want(m)
        await wait_for(lambda: first.assembly is not None and first.assembly.received == 6, 5, "6 chunks")
    assert not adopted  # stopped (the client process ends) with 4 chunks missing
    await publish(broker, [payloads[i] for i in range(6, 10)])
    recorder = Recorder(broker)
    second = ProxySync(config, TOPICS)
    async with running(second, recorder, rejects, adopted):
        second.want(m)
        await wait_for(lambda: bool(adopted), 5, "the proxy set after the restart")
    assert second.chunks_resumed == 6 and second.stats()["proxy_chunks_fetched"] == 4
    assert recorder.subscribed == [[TOPICS.proxy_chunk(m.proxy_id, i) for i in range(6, 10)]]
    assert np.array_equal(adopted[0].inputs, PIXELS)
    assert [p.name for p in tmp_path.iterdir()] == [f"proxy-{m.proxy_id}.bin"]


async def test_a_local_proxy_file_is_used_when_it_is_the_servers_and_refused_when_not(tmp_path: Path) -> None:
    broker = MemoryBroker()
    recorder = Recorder(broker)
    m = build_manifest(PIXELS, 10, CHUNK, "server")
    np.savez(tmp_path / "proxy.npz", x=PIXELS)
    sync, rejects, adopted = (ProxySync(ClientConfig(proxy_path=str(tmp_path / "proxy.npz")), TOPICS),
                              RejectCounter(logging.getLogger()), [])
    async with running(sync, recorder, rejects, adopted):
        sync.want(m)
        await wait_for(lambda: bool(adopted), 5, "the local proxy set")
    assert np.array_equal(adopted[0].inputs, PIXELS) and recorder.subscribed == []  # no chunk fetched
    other = PIXELS.copy()
    other[0, 0, 0, 0] ^= 1
    np.savez(tmp_path / "other.npz", x=other)
    wrong = ProxySync(ClientConfig(proxy_path=str(tmp_path / "other.npz")), TOPICS)
    wrong.want(m)
    with pytest.raises(DataError, match=f"other.npz.*proxy id is .* the server's is {m.proxy_id}"):
        await asyncio.wait_for(wrong.run(FetchLink(recorder, FETCH_ID), KnowledgeGate("server"), rejects,
                                         adopted.append), 10)


def _config(**kw) -> ClientConfig:
    return ClientConfig(node_id="c0", dataset="mnist5k", num_shards=2, tier="image-small", interval=0.01,
                        train=TrainSettings(epochs=1), keepalive=5, max_updates=1,
                        tier_policy=TierPolicy(high_load=1000.0, defer_load=1000.0), **kw)


async def test_a_federation_on_a_uint8_proxy_set_in_chunks_with_scheduled_subsets() -> None:
    broker = MemoryBroker()
    acks: list[Incoming] = []
    started = time.perf_counter()
    config = ServerConfig(dataset="mnist5k", proxy_chunk_bytes=64 * 1024, proxy_subset=200, distill_steps=5)
    async with ServerNode(config, transport=broker.factory) as server, \
            ClientNode(_config(), transport=broker.factory) as client, \
            broker.factory(LinkOptions("probe", subscriptions=((TOPICS.ack("rogue"), 1),),
                                       handler=acks.append)) as probe:
        learner = server.learner
        assert learner.proxy_x.dtype == np.uint8 and learner.proxy_x.shape == (1250, 1, 28, 28)
        await wait_for(lambda: client.proxy is not None, 20, "the proxy set at the client")
        assert client.proxy.inputs.dtype == np.uint8 and np.array_equal(client.proxy.inputs, learner.proxy_x)
        assert client.task.sync.stats()["proxy_chunks_fetched"] == learner.manifest.n_chunks == 15
        assert client.snapshot()["bytes_down"] > learner.proxy_x.nbytes  # the fetch links' bytes count too
        async with asyncio.timeout(60):
            await client.done()
        await wait_for(lambda: server.metrics.accepted == 1 and server.version >= 1, 30, "the update fused")
        await wait_for(lambda: client.knowledge is not None and client.knowledge.version == server.version, 10,
                       "the newest knowledge at the client")
        knowledge = client.knowledge
        assert isinstance(knowledge, Knowledge) and knowledge.logits is not None
        assert np.array_equal(knowledge.ids, learner.schedule.ids(knowledge.version))
        assert knowledge.logits.shape == (200, 10)
        # an update on samples the server did not schedule is refused by name
        wrong = np.setdiff1d(np.arange(1250, dtype=np.uint32), learner.schedule.ids(server.version))[:50]
        await probe.publish(TOPICS.update("rogue"), encode(Update(
            sender="rogue", seq=int(time.time() * 1000), base_version=server.version, tier="image-small",
            n_samples=5, proxy_id=learner.proxy_id, logits=np.zeros((50, 10), np.float16), sample_ids=wrong)))
        await wait_for(lambda: bool(acks), 5, "the verdict")
    verdict = decode(acks[0].payload)
    assert isinstance(verdict, Ack) and (verdict.accepted, verdict.reason) == (False, "unscheduled_ids")
    assert client.updates_accepted == 1 and dict(client.rejects.counts) == {}
    assert dict(server.rejects.counts) == {"unscheduled_ids": 1}
    print(f"\nuint8 proxy in 15 chunks, subsets of 200: {time.perf_counter() - started:.1f} s")
