"""A client node's footprint, measured from outside: ``python -m koala_async.tools.bench.footprint``.

What it runs: an embedded broker and (later) a real ServerNode in this process, and ``koala client``
as a separate process with its own private ``.npz`` (what a device has: no dataset package), the
smallest tier by default. It reports

- ``idle_rss``: the client's resident memory while connected and not training (it waits for the
  proxy set: torch and its data are loaded, no model yet), the median of psutil samples over
  ``idle_seconds``;
- ``peak_rss``: the highest resident memory while it trains and publishes ``updates`` updates, both as
  sampled by psutil every 10 ms from a thread of this process and as the kernel's own high-water mark
  (``VmHWM`` in ``/proc/<pid>/status``, Linux), read just before the client is stopped;
- ``import_s``: wall time of ``import koala_async.nodes.client`` in a fresh interpreter (median of
  ``import_runs``), the heaviest third-party packages in it from ``python -X importtime``, and
  ``import_torch_s``, the same for ``import torch`` (deferred until the node starts).

Callable from code (``await measure(...)`` or ``measure_sync(...)``) so a benchmark can include it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MB = 1_000_000
MiB = 1 << 20
FEDERATION = "footprint"
CLIENT_ID = "fp-client"


def import_time(runs: int = 3, module: str = "koala_async.nodes.client") -> dict[str, Any]:
    """Median wall time of importing ``module`` in a fresh interpreter, and its heaviest imports."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    walls = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                  timeout=120).stdout) for _ in range(runs)]
    trace = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True,
                           text=True, check=True, timeout=120).stderr
    packages: dict[str, int] = {}  # third-party package -> its largest cumulative import time (us)
    for line in trace.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)", line)
        if m and not m.group(3).startswith("koala_async"):
            package = m.group(3).split(".")[0]
            packages[package] = max(packages.get(package, 0), int(m.group(2)))
    top = sorted(((us, name) for name, us in packages.items()), reverse=True)
    return {"import_s": round(statistics.median(walls), 3), "runs": [round(w, 3) for w in walls],
            "heaviest": [{"module": name, "cumulative_ms": round(us / 1000, 1)} for us, name in top[:6]]}


def _vm_hwm(pid: int) -> int | None:
    """The kernel's peak resident set size of ``pid`` in bytes (Linux), or None."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds from a thread (not the event loop, which
    is busy running the server): a list of (monotonic time, bytes)."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self._proc.memory_info().rss))
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def between(self, start: float, end: float) -> list[int]:
        return [rss for t, rss in self.samples if start <= t <= end]


async def _client_state(url: str, timeout: float, want: str) -> None:
    """Wait until the client's retained status says ``want`` (a prefix of its state)."""
    from koala_async.core.envelope import Status, decode
    from koala_async.core.topics import Topics
    from koala_async.io.transport import BrokerAddress, MqttTransport

    topic = Topics(FEDERATION).client_status(CLIENT_ID)
    async with MqttTransport(BrokerAddress.parse(url), f"fp-watch-{os.getpid()}", subscriptions=((topic, 1),)) as t, \
            asyncio.timeout(timeout):
        async for msg in t.messages():
            status = decode(msg.payload)
            if isinstance(status, Status) and status.online and status.state.startswith(want):
                return


async def measure(tier: str = "image-tiny", updates: int = 3, idle_seconds: float = 2.0,
                  import_runs: int = 3, timeout: float = 180.0) -> dict[str, Any]:
    """Run the measurement (see the module docstring); returns the figures in bytes and MiB/MB."""
    import numpy as np

    from koala_async.io.broker import EmbeddedBroker, free_port
    from koala_async.learning.data import federate
    from koala_async.nodes.server import ServerConfig, ServerNode

    imports = await asyncio.to_thread(import_time, import_runs)
    torch_import = await asyncio.to_thread(import_time, import_runs, "torch")
    with tempfile.TemporaryDirectory(prefix="koala-footprint-") as tmp:
        shard = federate("digits", 0, 1, 0.5).client(0)
        npz = Path(tmp) / "private.npz"
        np.savez(npz, x=shard.x, y=shard.y)
        async with EmbeddedBroker(port=free_port()) as broker:
            cmd = [sys.executable, "-c", "from koala_async.tools.cli import main; raise SystemExit(main())",
                   "client", "--broker", broker.url, "--federation", FEDERATION, "--id", CLIENT_ID,
                   "--data", str(npz), "--tier", tier]
            log = (Path(tmp) / "client.log").open("wb")
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220 - returns at once
            try:
                with RssSampler(proc.pid) as sampler:
                    await _client_state(broker.url, timeout, "waiting for proxy set")
                    idle_from = time.monotonic()
                    await asyncio.sleep(idle_seconds)
                    idle = sampler.between(idle_from, time.monotonic())
                    config = ServerConfig(broker=broker.url, federation=FEDERATION, distill_steps=5, threads=1)
                    train_from = time.monotonic()
                    async with ServerNode(config) as server, asyncio.timeout(timeout):
                        while server.metrics.accepted_by_client.get(CLIENT_ID, 0) < updates:
                            if proc.poll() is not None:
                                raise RuntimeError(f"the client exited early ({proc.returncode}); see its log")
                            await asyncio.sleep(0.1)
                        hwm = _vm_hwm(proc.pid)
                        train = sampler.between(train_from, time.monotonic())
            finally:
                proc.terminate()
                try:
                    await asyncio.to_thread(proc.wait, 15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    await asyncio.to_thread(proc.wait, 5)
                log.close()
    peak = max([*train, *(idle or [0])])
    peak_hwm = max(peak, hwm or 0)
    return {
        "tier": tier, "updates": updates, "samples": len(shard), "pid_samples": len(sampler.samples),
        "idle_rss_bytes": int(statistics.median(idle)) if idle else None,
        "peak_rss_bytes": peak, "vm_hwm_bytes": hwm,
        "idle_rss_mib": round(statistics.median(idle) / MiB, 1) if idle else None,
        "peak_rss_mib": round(peak_hwm / MiB, 1), "peak_rss_mb": round(peak_hwm / MB, 1),
        **imports, "import_torch_s": torch_import["import_s"],
    }


def measure_sync(**kwargs: Any) -> dict[str, Any]:
    """:func:`measure` from synchronous code (starts and closes its own event loop)."""
    return asyncio.run(measure(**kwargs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m koala_async.tools.bench.footprint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", default="image-tiny")
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    result = measure_sync(tier=args.tier, updates=args.updates, idle_seconds=args.idle_seconds)
    print(f"client footprint ({result['tier']}, {result['samples']} private samples, {result['updates']} updates)")
    print(f"  idle RSS (connected, not training): {result['idle_rss_mib']} MiB")
    print(f"  peak RSS while training:            {result['peak_rss_mib']} MiB = {result['peak_rss_mb']} MB "
          f"(VmHWM {None if result['vm_hwm_bytes'] is None else round(result['vm_hwm_bytes'] / MiB, 1)} MiB)")
    print(f"  import koala_async.nodes.client:    {result['import_s']} s (runs {result['runs']}; torch is "
          f"imported later, when the node starts: import torch {result['import_torch_s']} s)")
    for row in result["heaviest"]:
        print(f"    {row['module']:<28} {row['cumulative_ms']:>8.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
