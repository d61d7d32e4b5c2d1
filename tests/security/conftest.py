"""Real Mosquitto brokers on free loopback ports: the shipped nodes/mosquitto.conf + nodes/mosquitto.acl
(``secure_broker``), and a TLS listener that requires client certificates (``tls_broker``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from koala_async.io.broker import free_port
from tests.conftest import find_mosquitto, wait_for_port
from tests.security.certs import PKIFiles, make_pki

REPO = Path(__file__).resolve().parents[2]
# Lines of the shipped config the test replaces: where it listens, where its files and data live.
_REPLACED = ("listener", "password_file", "acl_file", "persistence", "persistence_location", "log_dest")


@dataclass
class SecureBroker:
    url: str
    passwords: dict[str, str]
    log: Path


def shipped_config(port: int, passwd: Path, acl: Path) -> str:
    kept = [line for line in (REPO / "nodes" / "mosquitto.conf").read_text().splitlines()
            if line.split(" ", 1)[0] not in _REPLACED]
    return "\n".join(kept + [f"listener {port} 127.0.0.1", f"password_file {passwd}", f"acl_file {acl}",
                             "persistence false", "log_dest stderr",
                             # As root, mosquitto would switch to user mosquitto, which cannot read tmp.
                             *(["user root"] if os.geteuid() == 0 else []), ""])


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    binary = find_mosquitto()
    passwd_tool = shutil.which("mosquitto_passwd") or next(
        (p for p in ("/usr/bin/mosquitto_passwd", "/usr/sbin/mosquitto_passwd") if os.access(p, os.X_OK)), None)
    if binary is None or passwd_tool is None:
        pytest.skip("mosquitto and mosquitto_passwd are needed for the ACL tests")
    users = {"server": "server-secret", **{f"c{i:02d}": f"secret-{i}" for i in range(20)},
             "client-1": "one", "client-2": "two"}
    passwd = tmp_path / "koala.passwd"
    passwd.touch(mode=0o600)
    for user, password in users.items():
        subprocess.run([str(passwd_tool), "-b", str(passwd), user, password], check=True,
                       capture_output=True)
    os.chmod(passwd, 0o600)
    acl = tmp_path / "koala.acl"
    acl.write_text((REPO / "nodes" / "mosquitto.acl").read_text())
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(shipped_config(port, passwd, acl))
    log_path = tmp_path / "mosquitto.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, timeout=10.0, proc=proc)
        yield SecureBroker(f"mqtt://127.0.0.1:{port}", users, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass(frozen=True)
class TLSBroker:
    """A Mosquitto TLS listener on loopback that requires a client certificate signed by ``pki``'s CA."""

    host: str
    port: int
    pki: PKIFiles
    log: Path

    @property
    def url(self) -> str:
        return f"mqtts://{self.host}:{self.port}"

    @property
    def ca_file(self) -> str:
        return str(self.pki.ca_file)

    @property
    def cert_file(self) -> str:
        return str(self.pki.client_cert)

    @property
    def key_file(self) -> str:
        return str(self.pki.client_key)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TLSBroker]:
    """Mosquitto with ``require_certificate true`` on a free port (certificates in ``tmp_path/pki``).

    Connect with ``BrokerAddress.parse(broker.url, ca_file=broker.ca_file, cert_file=broker.cert_file,
    key_file=broker.key_file)``, or give a node config those four values."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto is needed for the TLS tests")
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    conf = tmp_path / "mosquitto-tls.conf"
    conf.write_text("\n".join([
        "per_listener_settings false", "allow_anonymous true", "persistence false", "log_dest stderr",
        "log_type error", "log_type warning", "log_type notice", "log_type information",
        *(["user root"] if os.geteuid() == 0 else []),  # as root it would switch to a user that cannot read tmp
        f"listener {port} 127.0.0.1", f"cafile {pki.ca_file}", f"certfile {pki.server_cert}",
        f"keyfile {pki.server_key}", "require_certificate true", ""]))
    log_path = tmp_path / "mosquitto-tls.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, timeout=10.0, proc=proc)
        yield TLSBroker("127.0.0.1", port, pki, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
