"""The link proxy relays bytes in order, delays each direction when asked, and its CLI checks input."""

from __future__ import annotations

import asyncio
import time

import pytest

from koala_async.io.broker import free_port
from koala_async.tools.linkproxy import LinkProxy, main


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _round_trip(port: int, payload: bytes) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(payload)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
    elapsed = time.perf_counter() - started
    writer.close()
    return got, elapsed


@pytest.mark.parametrize("delay", [0.0, 0.15])
async def test_relays_in_order_with_the_delay_asked_for(delay: float) -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    payload = bytes(range(256)) * 2048  # 512 KiB: many chunks through the delay queue
    async with server, LinkProxy(port, delay=delay) as proxy:
        got, elapsed = await _round_trip(proxy.port, payload)
    assert got == payload
    assert elapsed >= 2 * delay


async def test_unreachable_upstream_closes_the_client_side() -> None:
    async with LinkProxy(free_port(), connect_timeout=2.0) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, not hung
        writer.close()
    assert proxy.upstream_failures == 1


def test_cli_rejects_a_bad_address() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--listen", "nowhere", "--upstream", "127.0.0.1:1883"])
    assert exc.value.code == 2
