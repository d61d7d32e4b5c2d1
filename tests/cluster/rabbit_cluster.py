"""A throwaway RabbitMQ cluster on loopback: three nodes with the MQTT plugin, fresh data every time.

RabbitMQ (Debian ``rabbitmq-server`` 3.10) is the clustered MQTT broker that installs here. Each node
gets its own data, log and config under one temporary root, its own AMQP, distribution and MQTT ports
(all free loopback ports), and shares an Erlang cookie (a temporary ``HOME``) and a private port
mapper (``epmd``, started here on a free port bound to 127.0.0.1) with its peers. Nodes boot in
parallel (about 14 s each alone on 2 cores); the second and third then ``join_cluster`` the first.

Every process is started in its own session and stopped by its process group id (the Erlang VM runs
under the ``rabbitmq-server`` shell script), ``epmd`` included, so nothing outlives :meth:`stop`.

Facts this relies on, measured here: a node that lost its peers refuses MQTT connections ("client ID
registration timed out": the plugin tracks client ids in a Raft cluster that needs a majority), until
its data directory is wiped, so a cluster is three nodes and is never reused across tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from koala_async.io.broker import free_port

SCRIPTS = Path("/usr/lib/rabbitmq/bin")  # the real scripts: /usr/sbin's wrappers su to the rabbitmq user
COOKIE = "koala-async-test-cluster-cookie"


def rabbitmq_missing() -> str | None:
    """Why a cluster cannot start here (None when it can)."""
    if not (SCRIPTS / "rabbitmq-server").exists():
        return "rabbitmq-server is not installed (apt-get install rabbitmq-server; .ci/run does)"
    if shutil.which("epmd") is None:
        return "epmd (Erlang's port mapper, from erlang-base) is not on PATH"
    return None


class ClusterError(RuntimeError):
    """The cluster could not be started; the message quotes the failing command or log."""


@dataclass
class RabbitNode:
    """One RabbitMQ node: ``name@localhost`` with its own ports and data."""

    name: str
    root: Path
    mqtt_port: int = field(default_factory=free_port)
    amqp_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def nodename(self) -> str:
        return f"{self.name}@localhost"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def home(self) -> Path:
        return self.root / self.name

    def log_tail(self, lines: int = 30) -> str:
        text = []
        for log in sorted((self.home / "log").glob("*.log")) + [self.home / "stdout.log"]:
            if log.exists():
                text.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(text)


class RabbitCluster:
    """``with RabbitCluster(tmp_path) as cluster: cluster.nodes[0].url``; see the module docstring."""

    def __init__(self, root: Path, names: tuple[str, ...] = ("a", "b", "c"), boot_timeout: float = 120.0) -> None:
        self.root = root
        self.home = root / "home"  # HOME for every node and CLI call: holds the shared cookie
        self.epmd_port = free_port()
        # rabbitmqctl is an Erlang node too: give CLI calls their own port range (11 ports, like the default)
        self.ctl_port_min = free_port()
        self.nodes = [RabbitNode(name, root) for name in names]
        self.boot_timeout = boot_timeout
        self.timings: dict[str, float] = {}
        self._epmd: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self, node: RabbitNode | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(HOME=str(self.home), ERL_EPMD_ADDRESS="127.0.0.1", ERL_EPMD_PORT=str(self.epmd_port),
                   RABBITMQ_CTL_DIST_PORT_MIN=str(self.ctl_port_min),
                   RABBITMQ_CTL_DIST_PORT_MAX=str(self.ctl_port_min + 10),
                   RABBITMQ_CONF_ENV_FILE=str(self.root / "rabbitmq-env.conf"))
        if node is not None:
            base = node.home
            env.update(
                RABBITMQ_NODENAME=node.nodename, RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                RABBITMQ_NODE_PORT=str(node.amqp_port), RABBITMQ_DIST_PORT=str(node.dist_port),
                RABBITMQ_MNESIA_BASE=str(base / "mnesia"), RABBITMQ_LOG_BASE=str(base / "log"),
                RABBITMQ_PID_FILE=str(base / "pid"), RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
                RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
                RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
                # the distribution listener on loopback only, like everything else here
                RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}")
        return env

    def _prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(COOKIE)
        cookie.chmod(0o400)
        (self.root / "rabbitmq-env.conf").write_text("")
        for node in self.nodes:
            for sub in ("mnesia", "log"):
                (node.home / sub).mkdir(parents=True, exist_ok=True)
            (node.home / "rabbitmq.conf").write_text(
                f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}\n"
                f"mqtt.listeners.tcp.default = 127.0.0.1:{node.mqtt_port}\n"
                "mqtt.allow_anonymous = true\n"
                "log.file.level = info\n"
                "log.console = false\n")
            (node.home / "advanced.config").write_text("[].\n")
            # what `rabbitmq-plugins --offline enable rabbitmq_mqtt` writes, without its 1.5 s Erlang VM boot
            (node.home / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")

    def start(self) -> None:
        """Start epmd and every node, wait for their MQTT listeners, then join them into one cluster."""
        t0 = time.monotonic()
        self._prepare()
        self.timings["prepare_s"] = time.monotonic() - t0
        self._epmd = subprocess.Popen(["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                      env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        _wait_port(self.epmd_port, 10.0, "epmd")
        t1 = time.monotonic()
        for node in self.nodes:
            self._boot(node)
        for node in self.nodes:
            self.wait_mqtt(node)
        self.timings["boot_s"] = time.monotonic() - t1
        t2 = time.monotonic()
        first = self.nodes[0]
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda n: self._join(n, first), self.nodes[1:]))
        running = self.running_nodes(first)
        if sorted(running) != sorted(n.nodename for n in self.nodes):
            raise ClusterError(f"cluster formed with {running}, wanted every node")
        self.timings["join_s"] = time.monotonic() - t2

    def _boot(self, node: RabbitNode) -> None:
        out = (node.home / "stdout.log").open("wb")
        node.proc = subprocess.Popen([str(SCRIPTS / "rabbitmq-server")], env=self.env(node), cwd=node.home,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    def wait_mqtt(self, node: RabbitNode) -> None:
        """Block until ``node`` accepts TCP connections on its MQTT port (the plugin starts last)."""
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            if node.proc is None or node.proc.poll() is not None:
                raise ClusterError(f"{node.nodename} exited while booting:\n{node.log_tail()}")
            if _accepts(node.mqtt_port):
                return
            time.sleep(0.2)
        raise ClusterError(f"{node.nodename} did not open MQTT port {node.mqtt_port} within "
                           f"{self.boot_timeout:.0f}s:\n{node.log_tail()}")

    def _join(self, node: RabbitNode, first: RabbitNode) -> None:
        for args in (("stop_app",), ("join_cluster", first.nodename), ("start_app",)):
            done = self.ctl("rabbitmqctl", "-n", node.nodename, *args, timeout=120)
            if done.returncode != 0:
                raise ClusterError(f"rabbitmqctl -n {node.nodename} {' '.join(args)} failed "
                                   f"({done.returncode}):\n{done.stdout}{done.stderr}\n{node.log_tail()}")
        self.wait_mqtt(node)

    def ctl(self, tool: str, *args: str, node: RabbitNode | None = None,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a RabbitMQ CLI tool (``rabbitmqctl``, ``rabbitmq-plugins``) in this cluster's environment."""
        return subprocess.run([str(SCRIPTS / tool), *args], env=self.env(node), capture_output=True, text=True,
                              timeout=timeout, cwd=self.root, check=False)

    def running_nodes(self, via: RabbitNode) -> list[str]:
        """The cluster's running nodes as ``via`` sees them."""
        import json

        done = self.ctl("rabbitmqctl", "-n", via.nodename, "cluster_status", "--formatter", "json")
        if done.returncode != 0:
            raise ClusterError(f"rabbitmqctl cluster_status failed:\n{done.stdout}{done.stderr}")
        return list(json.loads(done.stdout)["running_nodes"])

    def kill(self, node: RabbitNode) -> None:
        """SIGKILL ``node``'s process group (the script, the Erlang VM and its helpers): a crash, not a stop."""
        proc, node.proc = node.proc, None
        if proc is None:
            return
        _kill_group(proc)

    def stop(self) -> None:
        """Stop every process this cluster started; safe to call twice and after a failed start."""
        for node in self.nodes:
            self.kill(node)
        epmd, self._epmd = self._epmd, None
        if epmd is not None:
            _kill_group(epmd)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group id is its pid
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_port(port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _accepts(port):
            return
        time.sleep(0.05)
    raise ClusterError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")
