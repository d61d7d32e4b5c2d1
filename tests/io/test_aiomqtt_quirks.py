"""What the transport does about aiomqtt 2.5's loose ends (see koala_async/io/negotiate.py)."""

from __future__ import annotations

import gc
import logging

import aiomqtt
import pytest

from koala_async.io.broker import free_port
from koala_async.io.negotiate import close_socket


def _never_retrieved(caplog: pytest.LogCaptureFixture, stored: bool) -> bool:
    caplog.clear()
    client = aiomqtt.Client("127.0.0.1", free_port())
    client._disconnected.set_exception(aiomqtt.MqttCodeError(128, "Unexpected disconnection"))
    if stored:
        close_socket(client)
    del client
    gc.collect()
    return "never retrieved" in caplog.text


async def test_close_socket_reads_a_disconnection_aiomqtt_stored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    # The double: without close_socket, asyncio reports the stored exception when the client goes
    # (the ERROR lines a client logged after each dropped link). With it, nothing is reported.
    assert _never_retrieved(caplog, stored=False)
    assert not _never_retrieved(caplog, stored=True)
