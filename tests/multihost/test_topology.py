"""The namespace harness itself: links carry traffic, go down and up, drop and delay packets as told,
and teardown leaves nothing behind, also when the body raises."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.netns import NETNS_DIR, Impairment, NetnsError, Topology

# A TCP echo server on HOST:PORT that prints "listening" once bound.
ECHO = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(); print("listening", flush=True)
while True:
    c, _ = s.accept()
    while data := c.recv(65536):
        c.sendall(data)
    c.close()
"""
# Connect to HOST:PORT, echo 16 bytes once, print the round trip in seconds (or the error).
PROBE = """
import socket, sys, time
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    t = time.perf_counter(); c.sendall(b"x" * 16); got = b""
    while len(got) < 16:
        got += c.recv(16)
    print(time.perf_counter() - t)
except OSError as exc:
    print("error", type(exc).__name__)
"""


def probe(topo: Topology, host: str, target: tuple[str, int], timeout: float = 2.0) -> str:
    argv = topo.exec_argv(host, [sys.executable, "-c", PROBE, target[0], str(target[1]), str(timeout)])
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False).stdout.strip()


def start_echo(topo: Topology, host: str, port: int = 7000) -> None:
    proc = topo.popen(host, [sys.executable, "-c", ECHO, topo.address(host), str(port)],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    topo._wait_line(proc, "listening", 30.0, "the echo server")


def test_link_down_cuts_traffic_and_up_restores_it(netns_ready: None) -> None:
    with Topology(["a", "b"]) as topo:
        start_echo(topo, "b")
        target = (topo.address("b"), 7000)
        assert not probe(topo, "a", target).startswith("error")
        topo.down("a")
        assert probe(topo, "a", target, timeout=1.0).startswith("error")
        topo.up("a")
        deadline = time.monotonic() + 20
        while probe(topo, "a", target).startswith("error"):
            assert time.monotonic() < deadline, "the link did not come back"


def test_teardown_removes_namespaces_and_processes_when_the_body_raises(netns_ready: None) -> None:
    topo = Topology(["a", "b"], impair={"a": Impairment(delay_ms=10, loss_pct=1)})
    with pytest.raises(RuntimeError, match="boom"), topo:
        assert len(topo.leftovers()) == 3  # a, b and the switch
        sleeper = topo.popen("b", ["sleep", "300"])
        raise RuntimeError("boom")
    assert sleeper.poll() is not None
    assert topo.leftovers() == []
    assert not [e for e in NETNS_DIR.iterdir() if e.name.startswith(topo.tag + "-")]


def test_loss_drops_about_the_share_asked_for(netns_ready: None, tmp_path: Path) -> None:
    with Topology(["a", "b"], impair={"a": Impairment(loss_pct=50)}) as topo:
        out = tmp_path / "received"
        counter = ("import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                   "s.bind((sys.argv[1], 7001)); s.settimeout(3); print('listening', flush=True); n = 0\n"
                   "try:\n    while True:\n        s.recv(100); n += 1\nexcept OSError:\n    pass\n"
                   "open(sys.argv[2], 'w').write(str(n))\n")
        listener = topo.popen("b", [sys.executable, "-c", counter, topo.address("b"), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        topo._wait_line(listener, "listening", 30.0, "the UDP counter")
        # A datagram dropped on output fails its sendto with EPERM: the sender counts on.
        sender = ("import socket, sys, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                  "for _ in range(400):\n    try:\n        s.sendto(b'x', (sys.argv[1], 7001))\n"
                  "    except PermissionError:\n        pass\n    time.sleep(0.001)\n")
        subprocess.run(topo.exec_argv("a", [sys.executable, "-c", sender, topo.address("b")]),
                       check=True, timeout=60)
        listener.wait(30)
        received = int(out.read_text())
        stats = topo.link_stats("a")
    print(f"\nloss 50% via {topo.method}: {received}/400 datagrams arrived; {stats}")
    assert 100 <= received <= 300  # binomial(400, 0.5): 6+ standard deviations either side
    assert stats.get("dropped_out", 0) >= 100


def test_delay_holds_each_direction(netns_ready: None) -> None:
    with Topology(["a", "b"], impair={"a": Impairment(delay_ms=100)}) as topo:
        start_echo(topo, "b")
        target = topo.endpoint("a", "b", 7000)
        result = probe(topo, "a", target, timeout=10.0)
        method = topo.method
    print(f"\ndelay 100 ms each way via {method}: round trip {result}s")
    assert not result.startswith("error"), result
    assert float(result) >= 0.2  # 100 ms out and 100 ms back, at least


def test_netem_is_used_where_the_kernel_has_it_and_refused_cleanly_where_not(netns_ready: None) -> None:
    topo = Topology(["a", "b"], impair={"a": Impairment(delay_ms=10, loss_pct=1)}, netem=True)
    try:
        with topo:
            assert topo.method == "netem"
            assert topo.endpoint("a", "b", 7000) == (topo.address("b"), 7000)  # no relay needed
    except NetnsError as exc:
        assert "netem" in str(exc)
    assert topo.leftovers() == []
