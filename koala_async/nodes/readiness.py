"""When a client trains: its turn (rounds or its own interval), its readiness (resources, new data or
knowledge), and how long a simulated device takes.

The pure rules are in :mod:`koala_async.core.tiering` (``readiness``, ``samples_per_epoch``); this
module re-probes resources (psutil, in a worker thread) and waits until the rules say train.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from koala_async.core.resources import ResourceSnapshot, get_profile
from koala_async.core.retention import SampleBuffer
from koala_async.core.tiering import readiness, samples_per_epoch
from koala_async.nodes.workers import Workers

if TYPE_CHECKING:
    from koala_async.nodes.config import ClientConfig
    from koala_async.nodes.local_training import LocalTask

log = logging.getLogger(__name__)

Report = Callable[[str], Awaitable[None]]  # the node's "this is what I am doing now"


class Readiness:
    def __init__(self, config: ClientConfig, task: LocalTask, samples: SampleBuffer, workers: Workers) -> None:
        self.config = config
        self.task = task
        self.samples = samples
        self.workers = workers
        self.profile = get_profile(config.profile) if config.profile else None
        self.resources = ResourceSnapshot()
        self.trained_on: tuple[int | None, int] | None = None  # (knowledge version, samples seen)
        self.contributed = False  # published an update this run without training it (a pending one)
        self._rng = random.Random(f"{config.seed}-{config.node_id}")

    def probe(self) -> ResourceSnapshot:
        """Measure resources now (blocking), capped by the simulated device profile if any."""
        from koala_async.io.resources import probe

        snapshot = probe(self.profile)
        if not self.config.host_load and self.profile is None:
            snapshot = dataclasses.replace(snapshot, load_1m=None)  # the other simulated devices' load
        self.resources = snapshot
        return self.resources

    def samples_per_epoch(self, distilling: bool = True) -> int:
        kd = distilling and self.config.train.kd_weight > 0
        return samples_per_epoch(len(self.samples), self.config.train.batch_size, kd)

    async def next_turn(self, report: Report) -> None:
        """Rounds: until a version this client has not trained on. Otherwise its own jittered interval
        between trainings; the first training starts at once unless a pending update was just
        published (the interval paces a client that has contributed; waiting it out before the first
        update only delayed the first version by 0.5-1.5 s)."""
        if not self.task.in_rounds:
            if self.trained_on is not None or self.contributed:
                await asyncio.sleep(self.config.interval * (0.5 + self._rng.random()))
            return
        trained = self.trained_on[0] if self.trained_on is not None else None
        if self.trained_on is not None and self.task.version == trained:
            await report("waiting for the next round")
        while self.task.version is None or (self.trained_on is not None and self.task.version == trained):
            self.task.changed.clear()
            await self.task.changed.wait()

    async def until_ready(self, report: Report) -> None:
        """Re-probe until the readiness policy says train; report why it waits meanwhile. Never while
        the task refuses to train (a shard from another split than the server's): that is reported
        and waits for knowledge that changes it."""
        refused, said = await self.workers.run(self.task.refusal), ""
        while refused:
            if refused != said:
                log.error("%s %s", self.config.node_id, refused)
                await report(refused)
                said = refused
            self.task.changed.clear()
            await self.task.changed.wait()
            refused = await self.workers.run(self.task.refusal)
        cfg = self.config
        since = time.monotonic()
        waiting = ""
        while True:
            await self.workers.run(self.probe)
            last_version, last_seen = self.trained_on or (None, -1)
            verdict = readiness(self.resources, cfg.tier_policy, trained_before=self.trained_on is not None,
                                new_knowledge=self.task.version != last_version,
                                new_data=self.samples.seen != last_seen, waited_s=time.monotonic() - since)
            if verdict.ready:
                return
            if waiting != verdict.reason:
                waiting = verdict.reason
                log.info("%s %s", cfg.node_id, verdict.reason)
                await report(verdict.reason)
            await asyncio.sleep(cfg.interval)

    def simulated_seconds(self, distilling: bool) -> float:
        """How long this training takes at the profile's FLOP/s (0 without a profile)."""
        spec = self.task.trained_spec()
        if self.profile is None or not self.resources.flops or spec is None:
            return 0.0
        flops = spec.train_flops_per_sample * self.samples_per_epoch(distilling) * self.config.train.epochs
        return flops / self.resources.flops

    def device_seconds(self, distilling: bool, cpu_seconds: float) -> float:
        """How long a training that took ``cpu_seconds`` of this host's CPU lasts on the device:
        the profile's FLOP time or the CPU time, whichever is longer, times ``slowdown``."""
        return max(self.simulated_seconds(distilling), cpu_seconds) * self.config.slowdown

    async def pace(self, started: float, distilling: bool, cpu_seconds: float = 0.0) -> None:
        """Make a training that began at ``started`` (perf_counter) and used ``cpu_seconds`` of CPU
        last as long as on this device.

        The device's time is derived from CPU time, not wall time: where many simulated devices
        share a host, a training's wall time is mostly waiting for a core, so scaling it (as this
        did) made a "10x slower" client only a second or two slower than the others, and rounds
        were gated by the server's distillation instead (measured: an 11 s wait for the slow
        clients, then 17 s of distillation, per round)."""
        target = self.device_seconds(distilling, cpu_seconds)
        log.info("%s trained on version %s: %.2f s wall, %.3f s CPU, %.2f s on the device", self.config.node_id,
                 self.trained_on[0] if self.trained_on else None, time.perf_counter() - started, cpu_seconds, target)
        await asyncio.sleep(max(0.0, target - (time.perf_counter() - started)))
