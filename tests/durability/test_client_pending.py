"""A client that crashed between training and publishing publishes its pending update after restart,
unless the federation has moved too far on meanwhile."""

from __future__ import annotations

import asyncio

import aiomqtt
import numpy as np
import pytest

from koala_async.core.envelope import Ack, Knowledge, Update, decode, encode
from koala_async.core.proxy_manifest import array_bytes, build_manifest, chunks
from koala_async.core.topics import Topics
from koala_async.io.transport import BrokerAddress
from koala_async.nodes.client import ClientConfig, ClientNode
from koala_async.nodes.client_state import PENDING, ClientState

pytestmark = pytest.mark.mosquitto
TOPICS = Topics("cp")


def test_client_state_keeps_pending_and_seq(tmp_path) -> None:
    state = ClientState(tmp_path)
    assert state.pending() is None and state.last_seq() == -1
    state.save_pending(b"payload", 42)
    assert ClientState(tmp_path).pending() == b"payload"
    assert ClientState(tmp_path).last_seq() == 42
    state.clear_pending()
    assert state.pending() is None and state.last_seq() == 42


async def _run_client_with_pending(url: str, tmp_path, knowledge_version: int) -> list[bytes]:
    """Retained proxy + knowledge at ``knowledge_version``; a client restarts with a pending update
    built on version 0. Returns the updates the broker received from it within a few seconds."""
    a = BrokerAddress.parse(url)
    proxy_x = np.zeros((8, 1, 8, 8), dtype=np.float32)
    manifest = build_manifest(proxy_x, num_classes=10, chunk_bytes=4096, sender="server", seq=1)
    pid = manifest.proxy_id
    knowledge = Knowledge(sender="server", seq=2, version=knowledge_version, proxy_id=pid, num_classes=10,
                          temperature=3.0, logits=None)
    pending = encode(Update(sender="client-0", seq=123, base_version=0, tier="image-small", n_samples=5,
                            proxy_id=pid, logits=np.ones((8, 10), dtype=np.float16)))
    state_dir = tmp_path / f"client-{knowledge_version}"
    ClientState(state_dir).save_pending(pending, 123)
    received: list[bytes] = []
    async with aiomqtt.Client(a.host, a.port, identifier=f"srv-{knowledge_version}") as srv:
        for chunk in chunks(manifest, array_bytes(proxy_x), "server"):
            await srv.publish(TOPICS.proxy_chunk(pid, chunk.index), encode(chunk), qos=1, retain=True)
        await srv.publish(TOPICS.proxy, encode(manifest), qos=1, retain=True)
        await srv.publish(TOPICS.knowledge, encode(knowledge), qos=1, retain=True)
        await srv.subscribe(TOPICS.update("client-0"), qos=1)
        config = ClientConfig(broker=url, federation="cp", node_id="client-0", state_dir=str(state_dir),
                              interval=600, pending_max_staleness=10)
        async with ClientNode(config) as client:
            try:
                async with asyncio.timeout(5):
                    async for msg in srv.messages:
                        received.append(bytes(msg.payload))
                        # the verdict: only then may the client forget its pending update
                        await srv.publish(TOPICS.ack("client-0"), encode(Ack(
                            sender="server", seq=3, client="client-0", update_seq=decode(received[-1]).seq,
                            accepted=True, reason="accepted", version=knowledge_version)), qos=1)
            except TimeoutError:
                pass
            assert client._seq.value > 123  # the seq counter resumes above what was persisted
    assert not (state_dir / PENDING).exists()
    return received


async def test_pending_update_is_published_after_restart(mosquitto_broker, tmp_path) -> None:
    received = await _run_client_with_pending(mosquitto_broker, tmp_path, knowledge_version=3)
    assert len(received) == 1
    update = decode(received[0])
    assert isinstance(update, Update) and (update.sender, update.seq) == ("client-0", 123)


async def test_stale_pending_update_is_discarded(mosquitto_broker, tmp_path, caplog) -> None:
    received = await _run_client_with_pending(mosquitto_broker, tmp_path, knowledge_version=30)
    # The client then trains at once (it has contributed nothing current): only the stale one is absent.
    assert all(decode(payload).seq != 123 for payload in received)
    assert "discarding the pending update" in caplog.text and "stale" in caplog.text
