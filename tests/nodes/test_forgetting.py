"""Departed and silent clients leave the fused targets, through the real server on the in-memory
transport: a goodbye (``online=false state=left``) or a last will (``state=lost``) drops the client's
contribution at the learner's next batch, and so does silence for ``max_silent_versions`` versions.
Memory follows the clients present: thirty clients that come, contribute and go leave nothing."""

from __future__ import annotations

import numpy as np
import pytest
from probe import Probe, distill_learner
from waiting import wait_for

from koala_async.io.memory import MemoryBroker
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(60)
CONFIG = ServerConfig(large_model="image-small", distill_steps=2, max_silent_versions=3, status_interval=60)


async def test_goodbye_last_will_and_silence_drop_contributions() -> None:
    broker = MemoryBroker()
    async with ServerNode(CONFIG, transport=broker.factory) as server, Probe(broker) as probe:
        learner = distill_learner(server)
        logits = np.random.default_rng(0).normal(0, 1, (len(learner.proxy_x), 10))

        async def contribute(sender: str) -> None:
            version, accepted = server.version, server.metrics.accepted
            await probe.update(sender, learner, version, logits)
            await wait_for(lambda: server.metrics.accepted > accepted and server.version > version, 20,
                           f"{sender}'s update fused")

        def held() -> set[str]:
            return set(learner.fusion.contributions)

        for sender in ("leaver", "lost", "stays"):
            await probe.status(sender, True, "idle")
            await contribute(sender)
        assert held() == {"leaver", "lost", "stays"}
        await probe.status("leaver", False, "left")  # its goodbye
        await probe.status("lost", False, "lost")  # its last will
        await wait_for(lambda: not {"leaver", "lost"} & set(server.state.presence), 5, "both gone from presence")
        assert held() == {"leaver", "lost", "stays"}  # the event loop never touches the fusion
        await contribute("stays")  # the learner's next batch applies the departures
        assert held() == {"stays"}

        await contribute("quiet")  # one update, then silence
        for _ in range(CONFIG.max_silent_versions):
            await contribute("stays")
        assert held() == {"stays", "quiet"}  # silent for 3 versions: kept
        await contribute("stays")
        assert held() == {"stays"}  # silent for 4 > max_silent_versions: forgotten

        for i in range(30):  # come, contribute, go
            await probe.status(f"visitor-{i}", True, "idle")
            await contribute(f"visitor-{i}")
            await probe.status(f"visitor-{i}", False, "left" if i % 2 else "lost")
        assert held() == {f"visitor-{29}"}  # "stays" was silent meanwhile; each visitor left at the next
        await contribute("stays")
        assert held() == {"stays"} and set(server.state.presence) == {"stays"}
        snapshot = server.snapshot()
        # leaver, lost, quiet, 30 visitors and "stays" once (silent through the visits)
        assert snapshot["contributions"] == 1 and snapshot["contributions_forgotten"] == 34
