"""One temperature per federation: the server's, carried in its knowledge, used by the server's fusion
and distillation and by every client's forward distillation; a fusion temperature that differs is
refused at config load."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch
from probe import distill_learner
from waiting import wait_for

from koala_async.config import load_into
from koala_async.core.modes import Mode
from koala_async.core.tiering import TierPolicy
from koala_async.errors import ConfigError
from koala_async.io.memory import MemoryBroker
from koala_async.learning import distill
from koala_async.nodes.client import ClientConfig, ClientNode, TrainSettings
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(60)


async def test_a_client_distills_at_the_server_temperature(monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[tuple[str, float]] = []  # (who called kd_loss, at which temperature)
    real = distill.kd_loss

    def spy(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        caller = sys._getframe(1).f_locals.get("self")
        used.append((type(caller).__name__, temperature))
        return real(student, teacher, temperature)

    monkeypatch.setattr(distill, "kd_loss", spy)
    broker = MemoryBroker()
    # sync: the client trains once per version, so its second training has the knowledge of version 1
    server_config = ServerConfig(mode=Mode.SYNC, temperature=1.5, large_model="image-small", distill_steps=5)
    client_config = ClientConfig(node_id="c0", mode=Mode.SYNC, max_updates=2, interval=0.01, tier="image-tiny",
                                 train=TrainSettings(epochs=1), tier_policy=TierPolicy(high_load=1e3, defer_load=1e3))
    async with ServerNode(server_config, transport=broker.factory) as server, \
            ClientNode(client_config, transport=broker.factory) as client:
        await wait_for(lambda: client.updates_sent == 2, 30, "two updates")
        await wait_for(lambda: server.version >= 2, 30, "the second update fused")
    assert client.knowledge is not None and client.knowledge.temperature == 1.5  # carried in the knowledge
    clients = [t for who, t in used if who == "LocalTrainer"]
    assert clients and set(clients) == {1.5}, used  # forward distillation: the server's T, not 3.0
    assert distill_learner(server).fusion.config.temperature == 1.5  # the fusion follows the server's
    assert {t for who, t in used if who == "Distiller"} == {1.5}


def test_a_fusion_temperature_that_differs_from_the_servers_is_refused_at_load() -> None:
    text = "[server]\ntemperature = 2.0\n[server.fusion]\ntemperature = 4.0\n"
    table: dict[str, Any] = {"temperature": 2.0, "fusion": {"temperature": 4.0}}
    with pytest.raises(ConfigError, match="one temperature"):
        load_into(ServerConfig, table, source="server.toml", text=text, prefix="server")
    derived = load_into(ServerConfig, {"temperature": 2.0}, prefix="server")
    assert derived.fusion.temperature == 2.0  # left at its default, it follows the server's
