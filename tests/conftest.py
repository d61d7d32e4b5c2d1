"""Shared fixtures: an embedded amqtt broker and a real Mosquitto subprocess, both on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import torch

from koala_async.io.broker import EmbeddedBroker, free_port

# Several nodes share two cores in the integration tests: keep torch from oversubscribing them.
torch.set_num_threads(1)

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto")


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_CANDIDATES if os.access(p, os.X_OK)), None)


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Block until ``host:port`` accepts TCP connections, or fail the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"mosquitto exited early with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing accepted connections on {host}:{port} within {timeout}s")


@pytest.fixture
async def embedded_broker() -> AsyncIterator[EmbeddedBroker]:
    """An amqtt broker running in this test's event loop on a free loopback port."""
    async with EmbeddedBroker(port=free_port()) as broker:
        yield broker


def _start_mosquitto(binary: str, tmp_path: Path, port: int) -> subprocess.Popen:
    conf = tmp_path / f"mosquitto-{port}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "max_queued_messages 0\n"  # 0 = unlimited: QoS 1 updates for a slow subscriber are kept
        "persistence false\n"
    )
    log = (tmp_path / f"mosquitto-{port}.log").open("wb")
    return subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)


def _require_mosquitto() -> str:
    binary = find_mosquitto()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed but CI is set: the CI image must provide it "
                        "(.ci/run installs it)")
        pytest.skip("mosquitto binary not found (install mosquitto to run the real-broker tests)")
    return binary


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[[], tuple[str, subprocess.Popen]]]:
    """Starts real mosquittos on free loopback ports: ``url, proc = start()``; each is stopped (by its
    PID) when the test ends, whatever the test did to it meanwhile."""
    binary = _require_mosquitto()
    procs: list[subprocess.Popen] = []

    def start() -> tuple[str, subprocess.Popen]:
        port = free_port()
        proc = _start_mosquitto(binary, tmp_path, port)
        procs.append(proc)
        wait_for_port("127.0.0.1", port, timeout=10.0, proc=proc)
        return f"mqtt://127.0.0.1:{port}", proc

    try:
        yield start
    finally:
        for proc in procs:
            _stop(proc)


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[str]:
    """A real ``mosquitto -c CONF`` on 127.0.0.1; yields its ``mqtt://`` URL."""
    binary = _require_mosquitto()
    port = free_port()
    proc = _start_mosquitto(binary, tmp_path, port)
    try:
        wait_for_port("127.0.0.1", port, timeout=10.0, proc=proc)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(params=["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
async def broker_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The URL of a running broker: the embedded amqtt one, then a real Mosquitto."""
    if request.param == "mosquitto":
        yield request.getfixturevalue("mosquitto_broker")
        return
    async with EmbeddedBroker(port=free_port()) as broker:
        yield broker.url
