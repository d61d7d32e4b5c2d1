"""``koala hostile``: attack a real federation with every class of bad input and check it holds.

A :class:`~koala_async.tools.bench.fleet.Fleet` runs Mosquitto (open: no ACL), a ``koala server``
that signs what it publishes and two or three ``koala client`` processes that pin its key. Once it
learns, an attacker (this process, client id ``mallory``) sends each class of
:mod:`~koala_async.tools.bench.attacks` in turn on the topic it targets (update, status, ack,
knowledge, proxy, server status), then a flood of made-up client ids. After each class the run reads
the nodes' own status counters (server and clients, by reason) until the expected counts arrive, and
at the end it checks that every process is alive, that the server's status always decoded with the
project's own decoder, and that an honest update sent afterwards is accepted. It prints a table of
classes -> counts; the exit code is 0 only when every class was counted exactly as expected.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

from koala_async.core.envelope import Status, Update, decode, encode
from koala_async.io.transport import BrokerAddress
from koala_async.tools.bench.attacks import (
    ATTACKER,
    Attack,
    Target,
    client_attacks,
    flood_attack,
    forged_server_status,
    server_attacks,
)
from koala_async.tools.bench.fleet import Fleet, FleetSettings, Observer, until


@dataclass(frozen=True)
class HostileSettings:
    clients: int = 3
    flood_ids: int = 10_000
    settle: float = 30.0  # seconds a class may take to show up in the counters
    fleet: FleetSettings = field(default_factory=FleetSettings)


@dataclass
class Row:
    name: str
    surface: str
    where: str
    sent: int
    expect: dict[str, int]
    got: dict[str, int]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.got == self.expect


def counters(obs: Observer, where: str) -> dict[str, int]:
    """The counts an attack class is judged by, as the nodes last published them."""
    server = obs.server_status
    if where == "server":
        return dict(server.get("rejected", {}))
    if where == "clients":
        total: dict[str, int] = {}
        for info in obs.clients.values():
            for reason, count in info.get("rejected", {}).items():
                total[reason] = total.get(reason, 0) + count
        return total
    if where == "accepted":  # the attacker's own accepted updates (listed while few clients are known)
        return {"accepted": int(server.get("accepted_by_client", {}).get(ATTACKER, 0))}
    return {"clients_accepted": int(server.get("clients_accepted", 0)), "clients_known": int(server.get("clients_known", 0))}


def _delta(after: dict[str, int], before: dict[str, int], keys: Any) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys}


class Attacker:
    def __init__(self, fleet: Fleet, settings: HostileSettings) -> None:
        self.fleet = fleet
        self.obs = fleet.observer
        self.settings = settings
        self.address = BrokerAddress.parse(fleet.url)

    async def send(self, client: aiomqtt.Client, messages: list[tuple[str, bytes, bool]]) -> None:
        gate = asyncio.Semaphore(64)

        async def one(topic: str, payload: bytes, retain: bool) -> None:
            async with gate:
                await client.publish(topic, payload, qos=1, retain=retain)

        await asyncio.gather(*(one(*m) for m in messages))

    async def run(self, client: aiomqtt.Client, attack: Attack) -> Row:
        obs, where = self.obs, attack.where
        if where == "observer":
            return await self.forged_status(client, attack)
        before = counters(obs, where)
        started = time.monotonic()
        await self.send(client, attack.messages)

        def arrived() -> bool:
            got = _delta(counters(obs, where), before, attack.expect)
            return all(got[k] >= v for k, v in attack.expect.items())

        try:
            await until(arrived, self.settings.settle, f"the counts of {attack.name!r}")
            await asyncio.sleep(1.5)  # one more status of each node: anything counted twice shows up
        except TimeoutError:
            pass
        got = _delta(counters(obs, where), before, attack.expect)
        return Row(attack.name, attack.surface, where, len(attack.messages), attack.expect, got,
                   round(time.monotonic() - started, 1))

    async def forged_status(self, client: aiomqtt.Client, attack: Attack) -> Row:
        """Publish the forgery (retained), then read the retained server status as a newcomer would."""
        started = time.monotonic()
        await self.send(client, attack.messages)
        deadline = started + self.settings.settle
        replaced = 0
        while time.monotonic() < deadline and not replaced:
            await asyncio.sleep(self.settings.fleet.status_interval)
            async with aiomqtt.Client(self.address.host, self.address.port, identifier="newcomer") as fresh:
                await fresh.subscribe(self.fleet.topics.server_status, qos=1)
                async with asyncio.timeout(5):
                    message = decode(bytes((await anext(aiter(fresh.messages))).payload))  # type: ignore[arg-type]
            replaced = int(isinstance(message, Status) and message.online)
        return Row(attack.name, attack.surface, "observer", 1, attack.expect, {"replaced": replaced},
                   round(time.monotonic() - started, 1))

    async def honest_update(self, client: aiomqtt.Client, target: Target) -> bool:
        """A valid update from a new, honest client id after all of it: accepted?"""
        seq = int(time.time() * 1000)
        logits = (np.random.default_rng(9).standard_normal((target.n_proxy, target.num_classes))).astype(np.float16)
        update = Update(sender=self.obs.honest_id, seq=seq, base_version=self.obs.version, tier="image-small",
                        n_samples=40, proxy_id=target.proxy_id, logits=logits, sent_at=time.time())
        await client.publish(self.fleet.topics.update(self.obs.honest_id), encode(update), qos=1)
        try:  # its verdict may queue behind the flood's ten thousand
            await until(lambda: any(a.update_seq == seq for a in self.obs.acks), 6 * self.settings.settle,
                        "the verdict")
        except TimeoutError:
            return False
        return next(a for a in self.obs.acks if a.update_seq == seq).accepted


async def run_hostile(workdir: Path, settings: HostileSettings = HostileSettings()) -> dict[str, Any]:
    """Run every attack class against a fresh fleet in ``workdir``; the result as plain data."""
    fleet_settings = FleetSettings(**{**settings.fleet.__dict__, "clients": settings.clients})
    async with Fleet(workdir, fleet_settings) as fleet:
        obs = fleet.observer
        await fleet.learning(3)
        await until(lambda: len(obs.knowledge_payloads) >= 2 and all(
            obs.clients.get(c, {}).get("knowledge_version", 0) > 1 for c in fleet.client_ids), 120,
            "every client to hold a knowledge version newer than the first", fleet)
        assert obs.proxy is not None
        target = Target(fleet.topics, obs.proxy.proxy_id, obs.proxy.shape[0], obs.proxy.num_classes,
                        obs.version, obs.knowledge_payloads[0], fleet.client_ids)
        accuracy_before = obs.server_status.get("test_accuracy")
        seq = int(time.time() * 1000)
        def catalog(now: Target) -> list[Attack]:
            return [*server_attacks(now, seq), *client_attacks(now, seq), forged_server_status(now, seq)]

        attacker = Attacker(fleet, settings)
        rows = []
        async with aiomqtt.Client(attacker.address.host, attacker.address.port, identifier=ATTACKER,
                                  timeout=60) as client:
            for i in range(len(catalog(target))):
                # built on the current version: the valid ones must not have gone stale meanwhile
                rows.append(await attacker.run(client, catalog(replace(target, version=obs.version))[i]))
            # built now: its updates are valid, so they must be built on the current version
            rows.append(await attacker.run(client, flood_attack(replace(target, version=obs.version),
                                                                settings.flood_ids, seq)))
            honest = await attacker.honest_update(client, target)
        alive = fleet.alive()
        server = dict(obs.server_status)
        clients = {c: dict(obs.clients.get(c, {})) for c in fleet.client_ids}
    return {
        "rows": [{**r.__dict__, "ok": r.ok} for r in rows], "honest_update_accepted": honest, "alive": alive,
        "stop_codes": fleet.stop_codes, "status_undecodable": obs.status_undecodable,
        "status_bytes_max": max((size for _, size in obs.status_times), default=0),
        "server_handler_errors": server.get("handler_errors_by_class", {}),
        "server_acks_dropped": server.get("acks_dropped", 0),
        # not judged here (robust fusion is not this harness's subject): what the valid floods did to learning
        "test_accuracy": {"before": accuracy_before, "after": server.get("test_accuracy")},
        "client_handler_errors": {c: info.get("handler_errors_by_class", {}) for c, info in clients.items()},
        "client_updates_accepted": {c: info.get("updates_accepted", 0) for c, info in clients.items()},
        "passed": honest and all(r.ok for r in rows) and all(alive.values()) and obs.status_undecodable == 0,
    }


def table(result: dict[str, Any]) -> str:
    """The classes -> counts table (plain text)."""
    lines = [f"{'class':34} {'topic':15} {'sent':>6} {'counted by':10} {'expected':46} {'counted':46} ok"]
    for r in result["rows"]:
        expect = ", ".join(f"{k} {v}" for k, v in r["expect"].items())
        got = ", ".join(f"{k} {v}" for k, v in r["got"].items())
        lines.append(f"{r['name']:34} {r['surface']:15} {r['sent']:>6} {r['where']:10} {expect:46} {got:46} "
                     f"{'yes' if r['ok'] else 'NO'}")
    alive = ", ".join(f"{name} {'up' if up else 'DOWN'}" for name, up in result["alive"].items())
    lines += ["", f"processes after the attacks: {alive}",
              f"honest update afterwards accepted: {result['honest_update_accepted']}",
              f"server status: largest {result['status_bytes_max']} bytes, undecodable {result['status_undecodable']}",
              f"handler errors: server {result['server_handler_errors']}, clients {result['client_handler_errors']}",
              (f"server test accuracy before / after (valid Sybil updates are accepted: not judged here): "
               f"{result['test_accuracy']['before']} / {result['test_accuracy']['after']}"),
              "PASS" if result["passed"] else "FAIL"]
    return "\n".join(lines)


def main(args: Any) -> int:
    """``koala hostile`` (see :func:`koala_async.tools.cli.build_parser`)."""
    import logging

    from koala_async.tools.cli import run_async

    logging.getLogger("mqtt").setLevel(logging.ERROR)  # paho's "N pending publish calls" while attacking

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="koala-hostile-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = run_async(run_hostile(workdir, HostileSettings(clients=args.clients, flood_ids=args.flood_ids)))
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"logs in {workdir}", file=sys.stderr)
    return 0 if result["passed"] else 1
