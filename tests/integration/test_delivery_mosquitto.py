"""End-to-end delivery over a real Mosquitto with its DEFAULT queue limits (``max_queued_messages 1000``,
``max_inflight_messages 20``): a burst the server cannot keep up with loses messages in the broker,
and still every update is accounted for, at the server and at the clients alike.

The server runs as its own process (``koala server``) and is SIGSTOPped while the clients publish, as
a server busy elsewhere (or a slow link) would fall behind: Mosquitto queues 1,000 updates for its
persistent session and drops the rest, still having PUBACKed every one to its client. The clients are
burst clients built on the real :class:`~koala_async.nodes.outbox.Outbox` (the one ``ClientNode``
uses) over real MQTT connections, each publishing its updates as fast as the broker acknowledges them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from waiting import wait_for

from koala_async.core.backoff import Backoff
from koala_async.core.envelope import Ack, ProxyManifest, Status, Update, decode
from koala_async.core.topics import Topics
from koala_async.io.base import Incoming
from koala_async.io.broker import free_port
from koala_async.io.transport import MqttTransport, parse_brokers
from koala_async.nodes.events import EventHub
from koala_async.nodes.outbox import Outbox
from koala_async.tools.processes import NodeProcess

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow, pytest.mark.timeout(180)]
FED = "delivery"
TOPICS = Topics(FED)
CLIENTS = 40
UPDATES = 50  # each: 2,000 in all, twice what Mosquitto queues for a stalled subscriber
ACK_TIMEOUT = 6.0  # longer than the stall: what the broker drops is lost to its queue limit, not to expiry


class BurstClient:
    """A client reduced to its delivery path: the real Outbox on a real MQTT link, acks fed back."""

    def __init__(self, url: str, name: str, proxy: ProxyManifest) -> None:
        self.name = name
        self.proxy = proxy
        self.outbox = Outbox(name, TOPICS.update(name), EventHub(name), None, None, ack_timeout=ACK_TIMEOUT)
        self.transport = MqttTransport(parse_brokers(url), f"burst-{name}", handler=self._take,
                                       subscriptions=((TOPICS.ack(name), 1),), backoff=Backoff(0.2, 2.0))
        self.unknown_acks = 0

    def _take(self, message: Incoming) -> None:
        ack = decode(message.payload)
        assert isinstance(ack, Ack)
        self.unknown_acks += self.outbox.on_ack(ack) is not None

    async def burst(self, seq0: int) -> None:
        rng = np.random.default_rng(seq0)
        for seq in range(seq0, seq0 + UPDATES):
            logits = rng.normal(size=(self.proxy.shape[0], self.proxy.num_classes)).astype(np.float16)
            await self.outbox.send(self.transport, Update(
                sender=self.name, seq=seq, base_version=0, tier="image-small", n_samples=50,
                proxy_id=self.proxy.proxy_id, logits=logits, sent_at=time.time()), "image-small")


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed but CI is set (.ci/run installs it)")
        pytest.skip("mosquitto binary not found")
    return found


def default_mosquitto(tmp_path: Path) -> tuple[str, subprocess.Popen[bytes]]:
    binary = mosquitto_binary()
    port = free_port()
    conf = tmp_path / "mosquitto-default-limits.conf"
    # Mosquitto's defaults, spelled out: what a broker nobody tuned does to a slow subscriber
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 1000\nmax_inflight_messages 20\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=(tmp_path / "mosquitto.log").open("wb"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return f"mqtt://127.0.0.1:{port}", proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"mosquitto did not listen on {port}: {(tmp_path / 'mosquitto.log').read_text()}")
            time.sleep(0.05)


async def test_every_update_is_accounted_for_when_mosquitto_drops_what_a_stalled_server_cannot_take(
        tmp_path: Path) -> None:
    """Runtime 25-45 s on 2 shared cores: server start 5-10 s, the burst 2-5 s, the server's catch-up
    and the republication of the updates the broker dropped (after ``ACK_TIMEOUT``) 10-25 s."""
    url, broker = default_mosquitto(tmp_path)
    report = tmp_path / "server-report.json"
    server = NodeProcess("server", "server", {
        "broker": url, "federation": FED, "dataset": "digits", "threads": 1, "distill_steps": 2,
        "status_interval": 0.5, "report_path": str(report)}, tmp_path)
    proxies: list[ProxyManifest] = []
    statuses: list[dict] = []

    def watch(message: Incoming) -> None:
        decoded = decode(message.payload)
        if isinstance(decoded, ProxyManifest):
            proxies.append(decoded)
        elif isinstance(decoded, Status) and decoded.info:
            statuses.append(decoded.info)

    clients: list[BurstClient] = []
    try:
        server.start()
        async with MqttTransport(parse_brokers(url), "watch", handler=watch,
                                 subscriptions=((TOPICS.proxy, 1), (TOPICS.server_status, 1))):
            await wait_for(lambda: bool(proxies), 60, "the server's proxy set")
        clients = [BurstClient(url, f"b{i}", proxies[0]) for i in range(CLIENTS)]
        for client in clients:
            await client.transport.__aenter__()
        try:
            for client in clients:
                await client.transport.wait_connected(20)
            assert clients[0].transport.stats.mqtt_version == 5  # so updates carry an expiry
            async with asyncio.TaskGroup() as tasks:
                for client in clients:
                    tasks.create_task(client.outbox.run(client.transport))
                try:
                    assert server.proc is not None
                    server.proc.send_signal(signal.SIGSTOP)  # the server falls behind
                    stalled = time.monotonic()
                    seq0 = int(time.time() * 1000)
                    await asyncio.gather(*(c.burst(seq0) for c in clients))
                    burst_s = time.monotonic() - stalled
                    await asyncio.sleep(max(0.0, 2.0 - burst_s))
                    server.proc.send_signal(signal.SIGCONT)
                    stall_s = time.monotonic() - stalled
                    assert stall_s < ACK_TIMEOUT
                    await wait_for(lambda: all(c.outbox.pending == 0 and c.outbox.ledger.unconfirmed == 0
                                               for c in clients), 90, "a verdict on every update")
                finally:
                    for task in tasks._tasks:  # type: ignore[attr-defined]
                        task.cancel()
        finally:
            for client in clients:
                await client.transport.__aexit__(None, None, None)
        assert server.stop(grace=20) == 0, server.tail(30)
    finally:
        server.kill()
        broker.kill()  # by its own handle: the PID this test started
        broker.wait(10)

    srv = json.loads(report.read_text())
    ledgers = [c.outbox.ledger for c in clients]
    sent = sum(ledger.sent for ledger in ledgers)
    publications = sent + sum(ledger.republished for ledger in ledgers)
    rejected: Counter[str] = Counter()
    for ledger in ledgers:
        rejected.update(ledger.rejected)
    server_rejected = {k: v for k, v in srv["rejected"].items() if k != "duplicate"}
    delivered = srv["accepted"] + sum(srv["rejected"].values())  # every update message the server read

    assert sent == CLIENTS * UPDATES
    # the broker PUBACKed every publication and delivered far fewer: the default limit dropped the rest
    assert delivered < publications - 500, (delivered, publications)
    # ... and still every update is accounted for, the same way at both ends
    assert all(ledger.balanced() and ledger.pending is None for ledger in ledgers)
    assert srv["accepted"] == sum(ledger.accepted for ledger in ledgers)
    assert srv["superseded"] == sum(ledger.superseded for ledger in ledgers)
    assert server_rejected == dict(rejected)
    assert sent == srv["accepted"] + srv["superseded"] + sum(server_rejected.values())
    assert srv["accepted_by_client"] == {c.name: c.outbox.accepted for c in clients if c.outbox.accepted}
    assert sum(c.unknown_acks for c in clients) == 0
    print(f"\n{sent} updates ({publications} publications) in a {burst_s:.1f} s burst, server stalled "
          f"{stall_s:.1f} s; the server read {delivered}: accepted {srv['accepted']}, superseded "
          f"{srv['superseded']}, rejected {dict(server_rejected)}, duplicate copies "
          f"{srv['rejected'].get('duplicate', 0)}; republished {publications - sent}")
