"""Watch a federation's retained status topics and print one JSON line per status message.

The multi-host test runs this inside a network namespace (``ip netns exec NS python status_watch.py
mqtt://BROKER:1883 FEDERATION``): the test process itself lives in the root namespace, which has no
route to the test's bridge.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from koala_async.core.envelope import Limits, Status, decode
from koala_async.core.topics import Topics
from koala_async.errors import MessageError
from koala_async.io.transport import BrokerAddress, MqttTransport


def _emit(record: dict[str, object]) -> None:
    print(json.dumps(record, default=str), flush=True)


async def watch(url: str, federation: str) -> None:
    topics = Topics(federation)
    subscriptions = ((topics.server_status, 1), (topics.all_client_status, 1))
    async with MqttTransport(BrokerAddress.parse(url), f"koala-{federation}-watch",
                         subscriptions=subscriptions) as transport:
        await transport.wait_connected(timeout=60)
        _emit({"event": "connected", "t": time.time()})
        async for msg in transport.messages():
            try:
                status = decode(msg.payload, Limits())
            except MessageError as exc:
                _emit({"event": "malformed", "t": time.time(), "reason": exc.reason})
                continue
            if not isinstance(status, Status):
                continue
            who = "server" if msg.topic == topics.server_status else topics.client_of(msg.topic)
            _emit({"event": "status", "t": time.time(), "who": who, "online": status.online,
                   "state": status.state, "retained": msg.retain, "info": status.info})


if __name__ == "__main__":
    try:
        asyncio.run(watch(sys.argv[1], sys.argv[2]))
    except KeyboardInterrupt:
        pass
