"""A small real federation for attack and load runs: Mosquitto, a ``koala server`` and a few ``koala
client`` processes, and an :class:`Observer` that watches them from outside.

The server signs what it publishes with an Ed25519 key made for the run (``server_key_file``) and
every client pins its public key (``server_public_key``), as a deployment on an open broker should.
The broker is open (no ACL): anyone may publish on any topic, which is what the attack runs need.

The observer is one MQTT connection that reads what the nodes publish, through the project's own
decoder: every server status (kept decoded, with its size and arrival time, and counted when it does
not decode), every knowledge version with its arrival time, the proxy set, each real client's status,
and the acks sent to one client id of its own (``honest_id``).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from koala_async.core.envelope import Ack, Knowledge, ProxyManifest, Status, decode
from koala_async.core.server_signing import is_sealed, open_sealed, parse_public_key, write_keypair
from koala_async.core.topics import Topics
from koala_async.errors import MessageError
from koala_async.io.transport import BrokerAddress
from koala_async.tools.brokers import broker_process, wait_listening
from koala_async.tools.processes import NodeProcess, ProcessSet


@dataclass(frozen=True)
class FleetSettings:
    clients: int = 2
    federation: str = "hostile"
    status_interval: float = 1.0
    distill_steps: int = 10
    client_epochs: int = 2
    client_interval: float = 1.0
    state_dir: bool = True  # the server journals and checkpoints (as a deployment would)
    server_extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Observer:
    """What the federation published, as seen by an outside MQTT client (see the module docstring)."""

    topics: Topics
    public_key: str
    client_ids: tuple[str, ...]
    honest_id: str = "honest-1"
    server_status: dict[str, Any] = field(default_factory=dict)
    status_times: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, payload bytes)
    # (monotonic, version, distillation steps done, accepted, seconds in the learner)
    progress: list[tuple[float, int, int, int, float]] = field(default_factory=list)
    status_undecodable: int = 0
    versions: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, knowledge version)
    knowledge_payloads: list[bytes] = field(default_factory=list)  # sealed, as published (for replays)
    proxy: ProxyManifest | None = None
    proxy_payload: bytes = b""
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)  # client id -> latest status info
    acks: list[Ack] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._keys = (parse_public_key(self.public_key),)

    def subscriptions(self) -> list[str]:
        t = self.topics
        return [t.server_status, t.knowledge, t.proxy, t.ack(self.honest_id),
                *(t.client_status(c) for c in self.client_ids)]

    def see(self, topic: str, payload: bytes) -> None:
        t, now = self.topics, time.monotonic()
        if topic == t.server_status:
            try:
                message = decode(payload)
            except MessageError:
                self.status_undecodable += 1
                return
            if isinstance(message, Status) and message.sender == "server":
                self.status_times.append((now, len(payload)))
                if message.online:
                    self.server_status = message.info
                    info = message.info
                    self.progress.append((now, int(info.get("version", 0)), int(info.get("distill_steps_done", 0)),
                                          int(info.get("accepted", 0)), float(info.get("distill_seconds", 0.0))))
            return
        try:
            sealed = is_sealed(payload)
            message = decode(open_sealed(payload, self._keys, t.federation) if sealed else payload)
        except MessageError:
            return  # not the server's: an attack on this topic, or a forged retained message
        if isinstance(message, (Knowledge, ProxyManifest)) and not sealed:
            return  # a forgery: the server signs these
        if isinstance(message, Knowledge) and topic == t.knowledge:
            if not self.versions or message.version != self.versions[-1][1]:
                self.versions.append((now, message.version))
            self.knowledge_payloads.append(payload)
            del self.knowledge_payloads[:-8]
        elif isinstance(message, ProxyManifest) and topic == t.proxy:
            self.proxy, self.proxy_payload = message, payload
        elif isinstance(message, Status) and message.sender in self.client_ids:
            self.clients[message.sender] = message.info
        elif isinstance(message, Ack):
            self.acks.append(message)

    @property
    def version(self) -> int:
        return self.versions[-1][1] if self.versions else 0

    async def run(self, url: str) -> None:
        address = BrokerAddress.parse(url)
        async with aiomqtt.Client(address.host, address.port, identifier=f"observer-{id(self)}") as client:
            for topic in self.subscriptions():
                await client.subscribe(topic, qos=1)
            async for msg in client.messages:
                self.see(msg.topic.value, bytes(msg.payload))  # type: ignore[arg-type]


async def until(predicate: Any, timeout: float, what: str, fleet: Fleet | None = None) -> None:
    """Wait for ``predicate()``; on timeout raise with ``what`` and the server's log tail."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = f"\nserver log:\n{fleet.server.tail(15)}" if fleet is not None else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
        await asyncio.sleep(0.1)


class Fleet:
    """``async with Fleet(workdir, settings) as fleet:`` the processes run and ``fleet.observer`` watches;
    on exit every process is stopped (by PID) and reaped."""

    def __init__(self, workdir: Path, settings: FleetSettings = FleetSettings()) -> None:
        self.workdir = workdir
        self.settings = settings
        self.topics = Topics(settings.federation)
        self.processes = ProcessSet()
        self.public_key = write_keypair(workdir / "server.key", overwrite=True)
        self.client_ids = tuple(f"c{i}" for i in range(settings.clients))
        self.observer = Observer(self.topics, self.public_key, self.client_ids)
        self.url = ""
        self._stack: AsyncExitStack | None = None
        self.stop_codes: dict[str, int | None] = {}

    @property
    def server(self) -> NodeProcess:
        return self.processes.nodes["server"]

    def clients(self) -> list[NodeProcess]:
        return [self.processes.nodes[c] for c in self.client_ids]

    def server_config(self) -> dict[str, Any]:
        s = self.settings
        config: dict[str, Any] = {
            "broker": self.url, "federation": s.federation, "dataset": "digits", "distill_steps": s.distill_steps,
            "buffer_size": 1, "status_interval": s.status_interval, "threads": 1,
            "server_key_file": str(self.workdir / "server.key"), "report_path": str(self.workdir / "server-report.json")}
        if s.state_dir:
            config["state_dir"] = str(self.workdir / "server-state")
        return {**config, **s.server_extra}

    def client_config(self, index: int) -> dict[str, Any]:
        s = self.settings
        return {"node_id": self.client_ids[index], "broker": self.url, "federation": s.federation,
                "dataset": "digits", "shard": index, "num_shards": len(self.client_ids), "tier": "image-small",
                "interval": s.client_interval, "threads": 1, "train": {"epochs": s.client_epochs},
                # train whatever the machine's load (a shared 2-core machine is often "busy")
                "tier_policy": {"high_load": 1000.0, "defer_load": 1000.0},
                "server_public_key": self.public_key}

    async def __aenter__(self) -> Fleet:  # noqa: PYI034 - as the nodes' own
        self._stack = AsyncExitStack()
        await self._stack.__aenter__()
        self._stack.callback(self._close)
        broker, self.url = broker_process("mosquitto", self.workdir)
        self.processes.add(broker)
        self.processes.start("broker")
        await asyncio.to_thread(wait_listening, BrokerAddress.parse(self.url).port, broker)
        tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        watcher = tasks.create_task(self.observer.run(self.url), name="observer")
        self._stack.callback(watcher.cancel)
        self.processes.add(NodeProcess("server", "server", self.server_config(), self.workdir))
        self.processes.start("server")
        for i, cid in enumerate(self.client_ids):
            self.processes.add(NodeProcess(cid, "client", self.client_config(i), self.workdir))
            self.processes.start(cid)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._stack is not None
        await self._stack.__aexit__(None, None, None)  # the watcher is cancelled, every process reaped

    def _close(self) -> None:
        self.processes.close(grace=10)
        self.stop_codes = {name: node.proc.returncode if node.proc else None
                           for name, node in self.processes.nodes.items()}

    async def learning(self, versions: int = 2, timeout: float = 180) -> None:
        """Wait until the server published ``versions`` versions and every client has an update accepted."""
        obs = self.observer
        await until(lambda: obs.proxy is not None and obs.version >= versions
                    and all(obs.clients.get(c, {}).get("updates_accepted", 0) >= 1 for c in self.client_ids),
                    timeout, f"the federation to learn ({versions} versions, every client accepted)", self)

    def alive(self) -> dict[str, bool]:
        return {name: node.alive for name, node in self.processes.nodes.items()}
