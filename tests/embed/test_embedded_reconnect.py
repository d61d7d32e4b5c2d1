"""Connection events across a real broker restart: a Mosquitto process is stopped and started again
on the same port while an embedded client runs; the client's event stream says so."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from koala_async.io.broker import free_port
from koala_async.nodes.client import ClientConfig, ClientNode
from koala_async.nodes.events import Connected, ConnectionLost, Event
from tests.conftest import _start_mosquitto, find_mosquitto, wait_for_port

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(90)]


async def next_event(stream: object, kind: type[Event], timeout: float) -> Event:
    async with asyncio.timeout(timeout):
        async for event in stream:  # type: ignore[attr-defined]
            if isinstance(event, kind):
                return event
    raise AssertionError(f"the stream ended without a {kind.__name__}")


async def test_connection_lost_and_regained_across_a_broker_restart(tmp_path: Path) -> None:
    binary = find_mosquitto()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed but CI is set")
        pytest.skip("mosquitto binary not found")
    port = free_port()
    proc = _start_mosquitto(binary, tmp_path, port)
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 10.0, proc)
        config = ClientConfig(broker=f"mqtt://127.0.0.1:{port}", federation="gw", node_id="gw-r",
                              dataset="none", num_classes=10)
        async with ClientNode(config) as client:
            stream = client.events()
            first = await next_event(stream, Connected, 15)
            assert isinstance(first, Connected) and not first.reconnect
            proc.terminate()
            await asyncio.to_thread(proc.wait, 10)
            lost = await next_event(stream, ConnectionLost, 15)
            assert isinstance(lost, ConnectionLost) and lost.error
            assert not client.transport.connected.is_set()
            proc = _start_mosquitto(binary, tmp_path, port)
            await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 10.0, proc)
            again = await next_event(stream, Connected, 30)
            assert isinstance(again, Connected) and again.reconnect
            assert client.transport.stats.connects == 2
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            proc.kill()
            proc.wait(timeout=5)
