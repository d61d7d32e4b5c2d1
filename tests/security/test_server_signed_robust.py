"""End to end through a real broker: a server with a keys file refuses unsigned and forged updates by
reason, and learns with robust (median) fusion set through ServerConfig.fusion."""

from __future__ import annotations

import asyncio
import json

import aiomqtt
import numpy as np
import pytest

from koala_async.core.envelope import Update, encode
from koala_async.core.fusion import FusionConfig
from koala_async.core.signing import sign
from koala_async.core.topics import Topics
from koala_async.io.transport import BrokerAddress
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.mosquitto
TOPICS = Topics("sig")


async def test_signed_updates_only_and_median_fusion(mosquitto_broker, tmp_path) -> None:
    keys = {f"c{i}": f"key-{i}" for i in range(3)}
    (tmp_path / "keys.json").write_text(json.dumps(keys))
    config = ServerConfig(broker=mosquitto_broker, federation="sig", keys_file=str(tmp_path / "keys.json"),
                          fusion=FusionConfig(method="median"), distill_steps=2, buffer_size=3)
    async with ServerNode(config) as server:
        await server.transport.wait_connected(10)
        assert server.learner.fusion.config.method == "median"

        def update(sender: str, seq: int) -> bytes:
            z = np.random.default_rng(seq).normal(size=(len(server.learner.proxy_x), server.learner.spec.num_classes))
            return encode(Update(sender=sender, seq=seq, base_version=0, tier="t", n_samples=10,
                                 proxy_id=server.learner.proxy_id, logits=z.astype(np.float16)))

        sends = [(f"c{i}", sign(update(f"c{i}", 1), keys[f"c{i}"].encode())) for i in range(3)]
        sends += [("c0", update("c0", 2)),  # unsigned
                  ("c1", sign(update("c1", 3), b"not-c1s-key")),  # forged
                  ("c9", sign(update("c9", 1), b"whatever"))]  # no key on file
        a = BrokerAddress.parse(mosquitto_broker)
        async with aiomqtt.Client(a.host, a.port, identifier="pub") as client:
            for sender, payload in sends:
                await client.publish(TOPICS.update(sender), payload, qos=1)
        async with asyncio.timeout(30):
            while server.metrics.accepted + server.rejects.total < len(sends) or server.version < 1:
                await asyncio.sleep(0.05)
        assert server.metrics.accepted == 3
        assert dict(server.rejects.counts) == {"unsigned": 1, "bad_signature": 1, "unknown_signer": 1}
        assert server.snapshot()["rejected"] == dict(server.rejects.counts)
        assert set(server.learner.fusion.contributions) == {"c0", "c1", "c2"}
