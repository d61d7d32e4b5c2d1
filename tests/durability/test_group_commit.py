"""The server's journal commits a burst of arrivals with one fsync: every record is written at once
(it survives the process being killed), the caller is told once per burst that it owes a sync, and a
sync, a rotation or a close leaves nothing unsynced."""

from __future__ import annotations

import os

from koala_async.io.checkpoint import ServerStore
from koala_async.io.durable import Journal


def test_a_burst_owes_one_sync_and_each_record_is_written_at_once(tmp_path, monkeypatch) -> None:
    store = ServerStore(tmp_path)
    store.journal = Journal(tmp_path)
    syncs = []
    real_fsync = os.fsync
    journal_fd = store.journal._handle.fileno()
    monkeypatch.setattr(os, "fsync", lambda fd: (fd == journal_fd and syncs.append(fd), real_fsync(fd)))
    owed = [store.append(f"record {i}".encode()) for i in range(5)]
    assert owed == [True, False, False, False, False]
    assert syncs == []  # nothing fsync'd yet: the node queues one sync for the burst
    assert [r.decode() for r in Journal(tmp_path).replay()] == [f"record {i}" for i in range(5)]  # but written
    store.sync()
    assert len(syncs) == 1 and store.journal.unsynced == 0
    store.sync()
    assert len(syncs) == 1  # nothing new: no fsync
    assert store.append(b"next burst") is True
    store.journal.rotate()  # a checkpoint capture: the old segment is fsync'd before it is closed
    assert store.journal.unsynced == 0 and len(syncs) == 2
