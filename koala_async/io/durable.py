"""Crash-safe files: atomic replacement and an append-only journal of records.

``atomic_write`` writes a temp file in the same directory, fsyncs it, renames it over the target and
fsyncs the directory, so after a power cut the target holds either the old or the new bytes, never a
mix. ``Journal`` appends length- and CRC-framed records to numbered segment files, fsyncing each
append, or (``sync=False``) leaving the fsync to one :meth:`Journal.sync` for a burst of appends
(group commit); a torn record at the tail (the crash hit mid-write) is detected and ignored on replay.
Segments let a checkpoint cover a prefix of the journal: ``rotate()`` starts a new segment, and once
the checkpoint that covers the older ones is durable, ``drop_before(n)`` deletes them.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<II")  # length, crc32
_SEGMENT = re.compile(r"^journal-(\d{8})\.log$")


def fsync_dir(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def remove_durably(path: str | Path) -> None:
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


class Journal:
    """Append-only, fsync'd records in ``directory/journal-NNNNNNNN.log`` segments."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = self.segments()
        self.segment = existing[-1] + 1 if existing else 1
        self._handle = self._open(self.segment)
        self.appended = 0
        self.unsynced = 0  # records written since the last fsync

    def segments(self) -> list[int]:
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _SEGMENT.match(p.name)))

    def _path(self, number: int) -> Path:
        return self.directory / f"journal-{number:08d}.log"

    def _open(self, number: int):  # type: ignore[no-untyped-def]
        handle = open(self._path(number), "ab")  # noqa: SIM115 - held open across appends, closed by close()
        fsync_dir(self.directory)
        return handle

    def append(self, record: bytes, sync: bool = True) -> None:
        """Write one record and fsync it: once this returns, the record survives a crash. With
        ``sync=False`` the record is written (it survives the process being killed) but survives a
        power cut only after the next :meth:`sync`."""
        self._handle.write(_FRAME.pack(len(record), zlib.crc32(record)) + record)
        self._handle.flush()
        self.appended += 1
        self.unsynced += 1
        if sync:
            self.sync()

    def sync(self) -> None:
        """fsync what was appended since the last sync (nothing to do when nothing was)."""
        if self.unsynced:
            os.fsync(self._handle.fileno())
            self.unsynced = 0

    def rotate(self) -> int:
        """Start a new segment; returns its number (records from here on land in it)."""
        self.sync()
        self._handle.close()
        self.segment += 1
        self._handle = self._open(self.segment)
        return self.segment

    def drop_before(self, number: int) -> None:
        """Delete segments older than ``number`` (a durable checkpoint now covers them)."""
        for old in self.segments():
            if old < number:
                self._path(old).unlink(missing_ok=True)
        fsync_dir(self.directory)

    def replay(self, start: int = 0) -> Iterator[bytes]:
        """Every intact record in segments ``>= start``, oldest first."""
        for number in self.segments():
            if number < start:
                continue
            data = self._path(number).read_bytes()
            offset = 0
            while offset + _FRAME.size <= len(data):
                length, crc = _FRAME.unpack_from(data, offset)
                body = data[offset + _FRAME.size: offset + _FRAME.size + length]
                if len(body) != length or zlib.crc32(body) != crc:
                    log.warning("journal segment %d: torn record at byte %d ignored", number, offset)
                    break
                yield body
                offset += _FRAME.size + length

    def close(self) -> None:
        self.sync()
        self._handle.close()
