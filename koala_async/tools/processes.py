"""Node processes: start ``python -m koala_async <role> --config FILE``, signal, and always reap."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class NodeProcess:
    name: str
    role: str
    config: dict[str, Any]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    argv: list[str] | None = None  # a command of its own (a broker); default: koala <role> --config
    expected_down: bool = False  # the runner stopped it on purpose: its exit is no failure
    nice: int = 0  # added to the process's niceness at start (lower scheduling priority)
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"{self.name}.log"

    def start(self) -> None:
        argv = self.argv
        if argv is None:
            cfg_path = self.workdir / f"{self.name}.json"
            cfg_path.write_text(json.dumps({self.role: self.config}, indent=2))
            argv = [sys.executable, "-m", "koala_async", self.role, "--config", str(cfg_path)]
        # KOALA_RUN_DIR tags every process of a run (tests find leftovers by it in /proc/*/environ).
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "KOALA_RUN_DIR": str(self.workdir)}
        log = self.log_path.open("ab")
        self.expected_down = False
        self.proc = subprocess.Popen(
            argv,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # its own process group: a Ctrl-C to the runner does not reach it
            preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None)
        log.close()
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

    def pids(self) -> list[int]:
        """Every pid this set ever started (restarts included), for checking that none survive."""
        return list(self._all_pids)
