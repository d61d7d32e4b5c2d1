"""A real-sized proxy set reaches a client through the shipped Mosquitto settings, across a cut link.

50,000 x 3 x 32 x 32 random uint8 pixels (153.6 MB, CIFAR-10's training set's size) would be one
614 MB float32 message before: over the client's 64 MiB decode limit and Mosquitto's 16 MiB
``max_packet_size``. Here the server (in this process) publishes a signed manifest and 37 retained
chunks of 4 MiB to a Mosquitto started with ``nodes/mosquitto.conf`` and ``nodes/mosquitto.acl``
(users and passwords, a free port, no persistence: tests/security/conftest.py ``secure_broker``); a
client node in its own process connects through a relay (tools/linkproxy.py), which cuts all its
links once, 45 MB into the transfer (in the middle of a chunk), and lets them reconnect 0.3 s later.
The client must finish with every chunk delivered exactly once (the links after the cut subscribe to
missing chunks only), the assembled whole verified against the proxy id, and about one copy of the
proxy set in its memory.

Slow, real infrastructure: 16-25 s on a loaded 2-core box (load 5-8), of which the transfer is about
4.5 s; the rest is writing and loading the 154 MB file, hashing it, publishing it, and a client process
importing torch.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest

from koala_async.nodes.server import ServerConfig, ServerNode
from koala_async.tools.linkproxy import LinkProxy
from tests.security.conftest import SecureBroker, secure_broker  # noqa: F401 - the fixture

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow, pytest.mark.timeout(180)]
REPO = Path(__file__).resolve().parents[2]
SHAPE = (50_000, 3, 32, 32)
CUT_AFTER = 45_000_000  # bytes relayed to the client (chunk 10 of 37) when its links are cut


class CuttingRelay(LinkProxy):
    """The relay, cutting every link once after ``CUT_AFTER`` bytes and restoring itself 0.3 s later."""

    relayed = 0
    cut_done = False

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.relayed += len(data)
                writer.write(data)
                await writer.drain()
                if not self.cut_done and self.relayed >= CUT_AFTER:
                    self.cut_done = True
                    self.cut()  # closes this link too: a chunk is half way across
                    asyncio.get_running_loop().call_later(0.3, self.restore)
        except (ConnectionError, OSError):
            pass


async def _client_process(broker_url: str, password: str, log: BinaryIO) -> asyncio.subprocess.Process:
    fields = {"node_id": "c00", "broker": broker_url, "username": "c00", "password": password,
              "federation": "big", "dataset": "none", "keepalive": 5, "threads": 1}
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("proxy_client_process.py")), json.dumps(fields),
        stdout=asyncio.subprocess.PIPE, stderr=log, env=env, limit=1 << 20)


async def test_a_150_mb_uint8_proxy_set_crosses_mosquitto_and_a_cut_link_fetching_each_chunk_once(
        secure_broker: SecureBroker, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    started = time.perf_counter()
    rng = np.random.default_rng(2024)
    np.savez(tmp_path / "proxy.npz", x=rng.integers(0, 256, size=SHAPE, dtype=np.uint8))
    np.savez(tmp_path / "test.npz", x=rng.integers(0, 256, size=(64, 3, 32, 32), dtype=np.uint8),
             y=np.arange(64) % 10)
    config = ServerConfig(broker=secure_broker.url, username="server", password=secure_broker.passwords["server"],
                          federation="big", proxy_path=str(tmp_path / "proxy.npz"),
                          test_path=str(tmp_path / "test.npz"), proxy_subset=2000, status_interval=5)
    async with ServerNode(config) as server, CuttingRelay(int(secure_broker.url.rsplit(":", 1)[1])) as relay:
        manifest = server.learner.manifest
        assert server.learner.proxy_x.dtype == np.uint8 and manifest.n_chunks == 37
        async with asyncio.timeout(60):  # every chunk retained on the broker before the client comes
            while server.transport.stats.messages_out < manifest.n_chunks + 2:
                await asyncio.sleep(0.05)
        ready = time.perf_counter()
        with (tmp_path / "client.log").open("wb") as log:  # the client's own log, kept for a failure
            proc = await _client_process(relay.url, secure_broker.passwords["c00"], log)
        try:
            async with asyncio.timeout(120):
                assert proc.stdout is not None
                line = await proc.stdout.readline()
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
    assert line, "the client process ended without the proxy set"
    result = json.loads(line)
    assert relay.cut_done and relay.relayed > 150_000_000
    assert (result["proxy_id"], result["dtype"], tuple(result["shape"])) == (manifest.proxy_id, "|u1", SHAPE)
    links, stats = result["links"], result["stats"]
    # one link died with part of its window; the next ones asked only for missing chunks: none came twice
    assert stats["proxy_links_lost"] == 1 and len(links) == stats["proxy_links"]
    assert all(link["subscribed"] <= 4 for link in links)  # 16 MiB in flight at most
    assert sum(link["messages"] for link in links) == 37 == stats["proxy_chunks_fetched"]
    assert [link["messages"] < link["subscribed"] for link in links].count(True) == 1
    assert stats["proxy_chunks_refused"] == {} and result["rejected"] == {}
    # one copy of the proxy set in the client: its 153.6 MB, plus a window of 4 chunks in flight, each
    # copied a few times on its way in (paho's packet, the payload, the decoded bytes); two copies of the
    # proxy set would be 307 MB. (The highest resident memory a thread saw during the transfer, over what
    # it was when it began; measured +179 to +196 MiB on a loaded 2-core box.)
    grown = result["rss_peak"] - result["rss_baseline"]
    assert grown < 153_600_000 + 96 * 2**20, grown
    print(f"\n150 MB proxy: {manifest.n_chunks} chunks over {len(links)} fetch links, "
          f"{[link['messages'] for link in links]} chunks each; transfer {result['transfer_seconds']} s "
          f"(client {result['seconds']} s from its start); "
          f"test {time.perf_counter() - started:.1f} s (server ready after {ready - started:.1f} s); "
          f"client memory +{grown / 2**20:.0f} MiB at peak")
