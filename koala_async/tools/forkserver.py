"""Start node processes by forking one that has already imported torch and the runtime.

Every node of a scenario is its own OS process, and each used to pay for importing torch, numpy,
aiomqtt and the runtime itself: about 1.5-2.5 s of CPU per process, 3 s of wall time alone. Ten of
them starting together on a 2-core machine took 13-20 s before the last client connected, which was
most of the quickstart's "~20 s before the first report" (measured: the server was up 10.7 s after
launch and the clients connected at 13 s, against 3.0 s for the same server process started alone).

:class:`ForkServer` is a process (``python -m koala_async.tools.forkserver``) that imports all of it
once, starts no thread, and then forks a node per request: the child makes its own session, takes
its niceness and cores, sends its output to its log file and runs ``koala <role> --config FILE``, as
the command line would. It is a real, separate process (signals, SIGKILL, SIGSTOP reach it by pid),
only without the imports. The fork server reaps its children and reports their exit codes; the
runner's side, :class:`ForkedProcess`, offers the part of :class:`subprocess.Popen` the runner uses.

Protocol (JSON lines): the runner writes ``{"argv": [...], "log": PATH, "nice": N, "cpus": [...]}``,
the server answers ``{"pid": PID}``; ``{"exit": PID, "code": CODE}`` comes whenever a child ends
(``code`` as Popen's ``returncode``: ``-N`` for a signal). Closing its stdin ends the fork server.
"""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from koala_async.tools.processes import place

READY = "ready"


# -- the fork server's side (its own process) -----------------------------------------------------

def _child(request: dict[str, Any]) -> None:
    """In the forked child: become the node (never returns)."""
    code = 1
    try:
        os.setsid()
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        if request.get("nice"):
            os.nice(int(request["nice"]))
        if request.get("cpus"):
            os.sched_setaffinity(0, set(request["cpus"]))
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        from koala_async.tools.cli import main

        sys.argv = ["koala", *request["argv"]]
        code = main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report it in the node's log, then exit like a crashed process
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reap(out: IO[str]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        out.write(json.dumps({"exit": pid, "code": os.waitstatus_to_exitcode(status)}) + "\n")
        out.flush()


def serve() -> None:
    """The fork server's loop: import everything, then fork per request until stdin closes."""
    import aiomqtt  # noqa: F401 - imported here so that no child pays for it
    import numpy  # noqa: F401
    import torch  # noqa: F401


    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass
    out, stdin = sys.stdout, sys.stdin.fileno()
    out.write(READY + "\n")
    out.flush()
    pending = b""
    while True:
        readable, _, _ = select.select([stdin], [], [], 0.05)
        _reap(out)
        if not readable:
            continue
        chunk = os.read(stdin, 65536)
        if not chunk:
            return  # the runner closed our stdin: it is done with us (children live on, in sessions of their own)
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _child(request)
            out.write(json.dumps({"pid": pid}) + "\n")
            out.flush()


# -- the runner's side ------------------------------------------------------------------------------

class ForkedProcess:
    """A node forked by the fork server: the part of :class:`subprocess.Popen` the runner uses."""

    def __init__(self, pid: int, server: ForkServer) -> None:
        self.pid = pid
        self._server = server

    @property
    def returncode(self) -> int | None:
        return self._server.exit_code(self.pid)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(0.02)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # an exited child's pid may already be someone else's
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """``ForkServer(env, cpus)``, then :meth:`spawn` per node; :meth:`close` when the run is over."""

    def __init__(self, env: dict[str, str], cpus: frozenset[int] | None = None, log: Path | None = None) -> None:
        self._exits: dict[int, int] = {}
        self._replies: queue.Queue[int] = queue.Queue()
        self._lock = threading.Lock()
        out = log.open("ab") if log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "koala_async.tools.forkserver"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=out, env=env, text=True, bufsize=1, start_new_session=True)
        place(self.proc.pid, 0, cpus)
        if log is not None:
            out.close()  # type: ignore[union-attr]
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, name="forkserver-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == READY:
                self._ready.set()
                continue
            message = json.loads(line)
            if "pid" in message:
                self._replies.put(int(message["pid"]))
            elif "exit" in message:
                with self._lock:
                    self._exits[int(message["exit"])] = int(message["code"])
        self._ready.set()  # it ended: wake anyone waiting for it to be ready

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Whether it has imported everything and can fork (False: it died or took too long)."""
        return self._ready.wait(timeout) and self.proc.poll() is None

    def spawn(self, argv: list[str], log: Path, nice: int = 0, cpus: frozenset[int] | None = None,
              timeout: float = 30.0) -> ForkedProcess:
        assert self.proc.stdin is not None
        request = {"argv": argv, "log": str(log), "nice": nice, "cpus": sorted(cpus) if cpus else None}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return ForkedProcess(self._replies.get(timeout=timeout), self)

    def exit_code(self, pid: int) -> int | None:
        with self._lock:
            return self._exits.get(pid)

    def close(self) -> None:
        """End the fork server (after the runner reaped its nodes; a child left running lives on)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)


if __name__ == "__main__":
    serve()
