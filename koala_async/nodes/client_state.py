"""A client's crash-safe state: its pending (trained, not yet acknowledged) update and its seq counter.

The encoded update is written atomically *before* it is published and removed once the broker has
acknowledged it (QoS 1 PUBACK), so a board that loses power between training and publishing
publishes the same update (same sequence number: the server's dedupe makes a double delivery
harmless) when it comes back, unless it has gone stale meanwhile.
"""

from __future__ import annotations

import json
from pathlib import Path

from koala_async.io.durable import atomic_write, remove_durably

PENDING = "pending-update.bin"
SEQ = "seq.json"


class ClientState:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def last_seq(self) -> int:
        try:
            return int(json.loads((self.directory / SEQ).read_text())["seq"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    def save_pending(self, payload: bytes, seq: int) -> None:
        """Persist the update about to be published, and the seq it used (never reused after)."""
        atomic_write(self.directory / SEQ, json.dumps({"seq": seq}).encode())
        atomic_write(self.directory / PENDING, payload)

    def pending(self) -> bytes | None:
        try:
            return (self.directory / PENDING).read_bytes()
        except FileNotFoundError:
            return None

    def clear_pending(self) -> None:
        remove_durably(self.directory / PENDING)
