"""A real Mosquitto running the shipped nodes/mosquitto.conf + nodes/mosquitto.acl, on a free port."""

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
