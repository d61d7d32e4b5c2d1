"""Node processes: start ``python -m koala_async <role> --config FILE`` (or fork it from a
:class:`~koala_async.tools.forkserver.ForkServer` that has done the imports), signal, and always reap."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from koala_async.tools.forkserver import ForkedProcess, ForkServer


def place(pid: int, nice: int = 0, cpus: frozenset[int] | None = None) -> None:
    """Lower ``pid``'s priority by ``nice`` and keep it on ``cpus``, from the parent (a ``preexec_fn``
    is not safe in a process with threads, as the runner is)."""
    try:
        if nice:
            os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, pid) + nice)
        if cpus:
            os.sched_setaffinity(pid, cpus)
    except ProcessLookupError:
        pass  # it already exited: its exit code tells the runner why


def node_env(workdir: Path) -> dict[str, str]:
    """The environment of a run's processes. KOALA_RUN_DIR tags every one of them (tests find
    leftovers by it in /proc/*/environ); one thread each, as several share a few cores."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "KOALA_RUN_DIR": str(workdir)}


@dataclass
class NodeProcess:
    name: str
    role: str
    config: dict[str, Any]
    workdir: Path
    proc: subprocess.Popen[bytes] | ForkedProcess | None = None
    starts: int = 0
    argv: list[str] | None = None  # a command of its own (a broker); default: koala <role> --config
    expected_down: bool = False  # the runner stopped it on purpose: its exit is no failure
    nice: int = 0  # added to the process's niceness at start (lower scheduling priority)
    cpus: frozenset[int] | None = None  # the cores it may run on (os.sched_setaffinity); None: any
    launcher: ForkServer | None = None  # fork the node from here (no imports to pay); None: exec python
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"{self.name}.log"

    def start(self) -> None:
        argv = self.argv
        self.expected_down = False
        if argv is None:
            cfg_path = self.workdir / f"{self.name}.json"
            cfg_path.write_text(json.dumps({self.role: self.config}, indent=2))
            if self.launcher is not None:
                self.proc = self.launcher.spawn([self.role, "--config", str(cfg_path)], self.log_path,
                                                self.nice, self.cpus)
                self.starts += 1
                return
            argv = [sys.executable, "-m", "koala_async", self.role, "--config", str(cfg_path)]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=node_env(self.workdir),
            start_new_session=True)  # its own process group: a Ctrl-C to the runner does not reach it
        log.close()
        place(self.proc.pid, self.nice, self.cpus)
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, wait ``grace`` seconds, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)  # a stopped (straggling) process cannot handle SIGTERM
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ProcessSet:
    """Every process a run started; ``close()`` leaves none behind, whatever happened."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeProcess] = {}
        self._all_pids: set[int] = set()
        self.launcher: ForkServer | None = None  # closed last, once every node it forked is reaped

    def add(self, node: NodeProcess) -> NodeProcess:
        self.nodes[node.name] = node
        return node

    def start(self, name: str) -> None:
        """(Re)start ``name``, first reaping a previous incarnation."""
        node = self.nodes[name]
        if node.proc is not None and node.proc.poll() is None:
            return
        node.start()
        assert node.proc is not None
        self._all_pids.add(node.proc.pid)

    def close(self, grace: float = 5.0) -> None:
        """SIGTERM everything (nodes first, the broker last so nodes can still say goodbye), wait up to
        ``grace`` seconds, SIGKILL what is left, and reap it all."""
        nodes = sorted(self.nodes.values(), key=lambda n: n.role == "broker")
        for group in ([n for n in nodes if n.role != "broker"], [n for n in nodes if n.role == "broker"]):
            deadline = time.monotonic() + grace
            for node in group:
                node.signal(signal.SIGCONT)  # a stopped (straggling) process cannot handle SIGTERM
                node.signal(signal.SIGTERM)
            for node in group:
                if node.proc is None:
                    continue
                try:
                    node.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    node.kill()
        if self.launcher is not None:
            self._all_pids.add(self.launcher.proc.pid)
            self.launcher.close()

    def pids(self) -> list[int]:
        """Every pid this set ever started (restarts included), for checking that none survive."""
        return list(self._all_pids)


def core_plan(cpus: set[int] | None = None) -> tuple[frozenset[int], frozenset[int]] | None:
    """(the server's cores, everyone else's) for nodes sharing this machine, or None with one core.

    The server distils on one core of its own; broker and clients share the rest. Separate devices
    never take the server's CPU; co-located processes would, and then the modes would be compared on
    how the OS shares two cores rather than on how they learn. ``cpus``: the cores this process may
    use (default: its affinity).
    """
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    ordered = sorted(cpus)
    if len(ordered) < 2:
        return None
    return frozenset(ordered[:1]), frozenset(ordered[1:])
