"""Hosts on separate Linux network namespaces, joined by veth links to one bridge: a multi-host
federation on one machine, over real links that can be impaired and cut.

``Topology(["broker", "server", "client-0"], impair={"client-0": Impairment(30, 1.5)})`` builds, on
entering:

- a switch namespace ``koala<pid>-sw`` holding bridge ``br0``;
- one namespace ``koala<pid>-<host>`` per host, with ``lo`` and ``eth0`` up and an address in a
  private /24 (``10.77.0.0/24`` by default: every address lives inside this run's namespaces, so
  concurrent runs and the root namespace never see it);
- a veth pair per host, created directly inside the two namespaces (the root namespace never holds
  an end), ``eth0`` on the host's side and ``v<pid>h<n>`` on the bridge.

Link impairment (delay and loss) uses ``tc netem`` on both ends of the link when the kernel has it
(found by trying). Otherwise it is emulated, and :attr:`Topology.method` says so:

- loss: an nftables table in the host's namespace drops each packet in or out of ``eth0`` with the
  given probability (real packet loss: TCP retransmits);
- delay: :meth:`Topology.endpoint` starts a delaying TCP relay (``tools/linkproxy.py``) on the host's
  loopback in front of the remote service, which holds every chunk for the one-way delay in each
  direction before sending it on across the link. It delays application data, not TCP's own ACKs.

``down(host)``/``up(host)`` set the bridge end of a host's link down and up (a cable pulled at the
switch). Leaving the ``with`` block (also on an error or Ctrl-C) kills what is still running inside
the namespaces and deletes every namespace, and with them every link, it made.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from koala_async.errors import KoalaError

PREFIX = "koala"
NETNS_DIR = Path("/run/netns")


class NetnsError(KoalaError):
    """A namespace topology could not be built or driven (not root, no ``ip``, a command failed)."""


@dataclass(frozen=True)
class Impairment:
    """What a host's link does to its packets: one-way delay in milliseconds and loss in percent,
    each applied in both directions."""

    delay_ms: float = 0.0
    loss_pct: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or not 0 <= self.loss_pct < 100:
            raise ValueError(f"bad impairment {self}: delay_ms >= 0 and 0 <= loss_pct < 100")


def find_tool(name: str) -> str | None:
    """``name`` on PATH or in the sbin directories a non-login shell may leave out."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (None when they can): not root, no ``ip``, or creating a
    namespace fails."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    ip = find_tool("ip")
    if ip is None:
        return "iproute2's `ip` is not installed"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = subprocess.run([ip, "netns", "add", probe], check=False, capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip() or made.returncode}"
    subprocess.run([ip, "netns", "del", probe], check=False, capture_output=True)
    return None


def sweep_stale() -> list[str]:
    """Delete namespaces a killed earlier run of this harness left behind (their pid is gone)."""
    ip = find_tool("ip")
    removed: list[str] = []
    if ip is None or not NETNS_DIR.is_dir():
        return removed
    for entry in NETNS_DIR.iterdir():
        match = re.fullmatch(rf"{PREFIX}(\d+)-.+", entry.name)
        if match is None or Path(f"/proc/{match.group(1)}").exists():
            continue
        _kill_inside(ip, entry.name)
        if subprocess.run([ip, "netns", "del", entry.name], check=False, capture_output=True).returncode == 0:
            removed.append(entry.name)
    return removed


def _kill_inside(ip: str, ns: str) -> None:
    """SIGKILL whatever still runs inside ``ns`` (only this harness starts processes there)."""
    out = subprocess.run([ip, "netns", "pids", ns], check=False, capture_output=True, text=True).stdout
    for pid in (int(p) for p in out.split() if p.isdigit()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Topology:
    """``with Topology(hosts, impair=...) as topo:``; see the module docstring."""

    def __init__(self, hosts: list[str], *, impair: dict[str, Impairment] | None = None,
                 subnet: str = "10.77.0.0/24", netem: bool | None = None) -> None:
        unknown = set(impair or {}) - set(hosts)
        if unknown:
            raise ValueError(f"impairment for unknown host(s) {sorted(unknown)}")
        if len(set(hosts)) != len(hosts) or not hosts:
            raise ValueError("hosts must be distinct and at least one")
        net = ipaddress.ip_network(subnet)
        if net.num_addresses - 2 < len(hosts):
            raise ValueError(f"{subnet} has too few addresses for {len(hosts)} hosts")
        self.hosts = list(hosts)
        self.impair = dict(impair or {})
        self.prefixlen = net.prefixlen
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-sw"
        self._address = {h: str(net.network_address + n + 1) for n, h in enumerate(hosts)}
        self._peer = {h: f"v{os.getpid() % 10_000_000}h{n}" for n, h in enumerate(hosts)}
        self._want_netem = netem  # None: use it when the kernel has it
        self.method = "none"
        self._made: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._relays: dict[tuple[str, str, int], int] = {}
        self._ip = find_tool("ip") or ""

    # --- naming -------------------------------------------------------------------------------
    def ns(self, host: str) -> str:
        """The namespace name of ``host``."""
        self._check(host)
        return f"{self.tag}-{host}"

    def address(self, host: str) -> str:
        """``host``'s IPv4 address on the bridge."""
        self._check(host)
        return self._address[host]

    def _check(self, host: str) -> None:
        if host not in self._address:
            raise NetnsError(f"no host {host!r} in this topology (hosts: {self.hosts})")

    # --- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> Self:
        if not self._ip:
            raise NetnsError("iproute2's `ip` is not installed")
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        self._add_ns(self.switch)
        self._run_ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        self._run_ip("-n", self.switch, "link", "set", "br0", "up")
        for host in self.hosts:
            ns, peer = self.ns(host), self._peer[host]
            self._add_ns(ns)
            self._run_ip("-n", ns, "link", "set", "lo", "up")
            # Both ends are born inside their namespaces: no name in the root namespace to collide.
            self._run_ip("-n", self.switch, "link", "add", peer, "type", "veth", "peer", "name", "eth0",
                         "netns", ns)
            self._run_ip("-n", self.switch, "link", "set", peer, "master", "br0", "up")
            self._run_ip("-n", ns, "addr", "add", f"{self._address[host]}/{self.prefixlen}", "dev", "eth0")
            self._run_ip("-n", ns, "link", "set", "eth0", "up")
        impaired = {h: i for h, i in self.impair.items() if i.delay_ms > 0 or i.loss_pct > 0}
        if impaired:
            use_netem = self._want_netem
            if use_netem is None:
                host, imp = next(iter(impaired.items()))
                use_netem = self._try_netem(host, imp)
                if use_netem:
                    del impaired[host]
            self.method = "netem" if use_netem else "nftables-loss+relay-delay"
            for host, imp in impaired.items():
                if use_netem:
                    if not self._try_netem(host, imp):
                        raise NetnsError(f"tc netem failed on {host}'s link")
                else:
                    self._nft_loss(host, imp.loss_pct)

    def _add_ns(self, ns: str) -> None:
        self._run_ip("netns", "add", ns)
        self._made.append(ns)

    def close(self) -> None:
        """Stop every process started here, then delete every namespace made (links go with them).
        Safe to call twice."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5.0
        for proc in self._procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._procs.clear()
        for ns in reversed(self._made):
            _kill_inside(self._ip, ns)
            subprocess.run([self._ip, "netns", "del", ns], check=False, capture_output=True)
        self._made.clear()
        self._relays.clear()

    def leftovers(self) -> list[str]:
        """Namespaces of this topology that still exist (empty after ``close()``)."""
        if not NETNS_DIR.is_dir():
            return []
        return sorted(e.name for e in NETNS_DIR.iterdir() if e.name.startswith(f"{self.tag}-"))

    # --- links --------------------------------------------------------------------------------
    def down(self, host: str) -> None:
        """Take ``host``'s link down at the bridge: nothing crosses it until ``up(host)``."""
        self._check(host)
        self._run_ip("-n", self.switch, "link", "set", self._peer[host], "down")

    def up(self, host: str) -> None:
        self._check(host)
        self._run_ip("-n", self.switch, "link", "set", self._peer[host], "up")

    def _try_netem(self, host: str, imp: Impairment) -> bool:
        """netem on both ends of ``host``'s link (each end delays and drops what it sends)."""
        args = ["netem", "delay", f"{imp.delay_ms}ms", "loss", f"{imp.loss_pct}%"]
        tc = find_tool("tc")
        if tc is None:
            return False
        first = subprocess.run([tc, "-n", self.ns(host), "qdisc", "add", "dev", "eth0", "root", *args],
                               check=False, capture_output=True, text=True)
        if first.returncode != 0:
            return False
        self._run([tc, "-n", self.switch, "qdisc", "add", "dev", self._peer[host], "root", *args])
        return True

    def _nft_loss(self, host: str, loss_pct: float) -> None:
        if loss_pct <= 0:
            return
        nft = find_tool("nft")
        if nft is None:
            raise NetnsError("tc netem is missing from this kernel and nftables (`nft`) is not installed: "
                             "no way to drop packets on a link")
        per_100k = round(loss_pct * 1000)
        rules = "\n".join([
            "table inet koala_impair {",
            "  chain out { type filter hook output priority 0; policy accept;",
            f'    oifname "eth0" numgen random mod 100000 < {per_100k} counter drop',
            "  }",
            "  chain in { type filter hook input priority 0; policy accept;",
            f'    iifname "eth0" numgen random mod 100000 < {per_100k} counter drop',
            "  }",
            "}",
        ])
        self._run([self._ip, "netns", "exec", self.ns(host), nft, "-f", "-"], input=rules)

    def link_stats(self, host: str) -> dict[str, Any]:
        """Bytes and packets through ``host``'s ``eth0``, and packets the impairment dropped."""
        out = self._run([self._ip, "-n", self.ns(host), "-j", "-s", "link", "show", "eth0"])
        stats = json.loads(out)[0].get("stats64", {})
        result: dict[str, Any] = {"tx_bytes": stats.get("tx", {}).get("bytes", 0),
                                  "rx_bytes": stats.get("rx", {}).get("bytes", 0),
                                  "tx_packets": stats.get("tx", {}).get("packets", 0),
                                  "rx_packets": stats.get("rx", {}).get("packets", 0)}
        imp = self.impair.get(host)
        if imp is not None and imp.loss_pct > 0 and self.method.startswith("nftables"):
            listing = self._run([self._ip, "netns", "exec", self.ns(host), find_tool("nft") or "nft",
                                 "list", "table", "inet", "koala_impair"])
            counts = [int(n) for n in re.findall(r"counter packets (\d+)", listing)]
            result["dropped_out"], result["dropped_in"] = (counts + [0, 0])[:2]
        elif imp is not None and self.method == "netem":
            listing = self._run([find_tool("tc") or "tc", "-n", self.ns(host), "-s", "qdisc", "show",
                                 "dev", "eth0"])
            result["dropped_out"] = sum(int(n) for n in re.findall(r"dropped (\d+)", listing))
        return result

    # --- processes ----------------------------------------------------------------------------
    def exec_argv(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` prefixed to run inside ``host``'s namespace (``ip netns exec`` execs it: same pid)."""
        return [self._ip, "netns", "exec", self.ns(host), *argv]

    def popen(self, host: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host``'s namespace; ``close()`` stops it if it is still running."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(self.exec_argv(host, argv), **kwargs)
        self._procs.append(proc)
        return proc

    def endpoint(self, host: str, target: str, port: int) -> tuple[str, int]:
        """Where a process on ``host`` connects to reach ``target:port`` through ``host``'s impaired
        link. With netem (or no delay) that is the target itself; with the fallback it is a delaying
        relay this call starts on ``host``'s loopback (once per target and port)."""
        imp = self.impair.get(host, Impairment())
        if self.method == "netem" or imp.delay_ms <= 0:
            return self.address(target), port
        key = (host, target, port)
        if key not in self._relays:
            proc = self.popen(host, [sys.executable, "-m", "koala_async.tools.linkproxy",
                                     "--listen", f"127.0.0.1:{port}", "--upstream",
                                     f"{self.address(target)}:{port}", "--delay-ms", str(imp.delay_ms)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
            self._wait_line(proc, "listening", timeout=30.0, what=f"the relay on {host}")
            self._relays[key] = port
        return "127.0.0.1", self._relays[key]

    @staticmethod
    def _wait_line(proc: subprocess.Popen[bytes], marker: str, timeout: float, what: str) -> None:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        seen = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                line = proc.stdout.readline()
                seen += line
                if marker.encode() in line:
                    return
                if not line and proc.poll() is not None:
                    break
        raise NetnsError(f"{what} did not start: {seen.decode(errors='replace')[-500:]}")

    # --- plumbing -----------------------------------------------------------------------------
    def _run_ip(self, *args: str) -> str:
        return self._run([self._ip, *args])

    @staticmethod
    def _run(argv: list[str], input: str | None = None) -> str:
        done = subprocess.run(argv, check=False, capture_output=True, text=True, input=input)
        if done.returncode != 0:
            raise NetnsError(f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.returncode}")
        return done.stdout
