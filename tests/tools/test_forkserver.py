"""The fork server starts real node processes without re-importing torch: their own session, log,
cores and exit codes, signals by pid, nothing left behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from koala_async.io.broker import free_port
from koala_async.tools.forkserver import ForkServer
from koala_async.tools.processes import core_plan, node_env

pytestmark = pytest.mark.timeout(120)


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_forked_nodes_are_real_processes_with_their_own_log_session_and_exit_code(tmp_path: Path) -> None:
    server = ForkServer(node_env(tmp_path), log=tmp_path / "forkserver.log")
    try:
        assert server.wait_ready(90), (tmp_path / "forkserver.log").read_text()
        port = free_port()
        started = time.monotonic()
        cpus = frozenset(sorted(os.sched_getaffinity(0))[-1:])
        node = server.spawn(["broker", "--port", str(port)], tmp_path / "broker.log", nice=3, cpus=cpus)
        log = tmp_path / "broker.log"
        _wait_for(lambda: log.exists() and "listening" in log.read_text(), 30, "the broker's first line")
        spawn_seconds = time.monotonic() - started
        assert node.poll() is None and os.getsid(node.pid) == node.pid  # a session of its own
        assert os.sched_getaffinity(node.pid) == set(cpus)
        assert os.getpriority(os.PRIO_PROCESS, node.pid) >= 3
        environ = Path(f"/proc/{node.pid}/environ").read_bytes()
        assert f"KOALA_RUN_DIR={tmp_path}".encode() in environ  # how tests find leftovers
        node.send_signal(signal.SIGTERM)
        assert node.wait(20) == 0  # a clean exit through the CLI's signal handling
        crashed = server.spawn(["broker", "--port", str(free_port())], tmp_path / "b2.log")
        _wait_for(lambda: (tmp_path / "b2.log").exists() and "listening" in (tmp_path / "b2.log").read_text(),
                  30, "the second broker")
        crashed.kill()
        assert crashed.wait(10) == -signal.SIGKILL
        print(f"\nforked broker listening {spawn_seconds:.2f} s after the request")
    finally:
        server.close()
    assert server.proc.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(node.pid, 0)


def test_core_plan_gives_the_server_a_core_of_its_own() -> None:
    assert core_plan({0, 1}) == (frozenset({0}), frozenset({1}))
    assert core_plan({2, 5, 7}) == (frozenset({2}), frozenset({5, 7}))
    assert core_plan({0}) is None and core_plan(set()) is None
