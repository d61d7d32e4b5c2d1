"""Assembling a proxy set from its chunks: which are held, which are missing, what was refused.

A :class:`ProxyAssembly` belongs to one :class:`~koala_async.core.proxy_manifest.ProxyManifest` and
writes each chunk that verifies straight into one buffer of the whole array's size (the caller's: a
bytearray, or a memory-mapped file so a restarted client keeps what it had). It never holds a second
copy: :meth:`array` is a view of that buffer.

``offer`` refuses a chunk, and counts it by reason, when it is not one the manifest expects:

- ``wrong_proxy``: it belongs to another proxy set (or arrived on another's topic);
- ``bad_index``: past the manifest's last chunk, or not the index its topic names;
- ``bad_chunk_size``: not the byte count the manifest implies for that index;
- ``bad_chunk_hash``: its SHA-256 is not the manifest's (corrupted or forged);
- ``duplicate_chunk``: already held (a broker re-delivery; harmless, but it cost bandwidth).

:meth:`resume` re-verifies a buffer that already holds data (a file from before a restart) chunk by
chunk, so only chunks whose hash fails are fetched again. :meth:`verify` checks the assembled whole
against the proxy id (dtype, shape and bytes).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import numpy as np

from koala_async.core.arrays import ALLOWED_DTYPES
from koala_async.core.proxy_manifest import ProxyChunk, ProxyManifest, content_id


class ProxyAssembly:
    """The chunks of one proxy set received so far, in ``buffer`` (``manifest.total_bytes`` long)."""

    def __init__(self, manifest: ProxyManifest, buffer: Any = None) -> None:
        self.manifest = manifest
        data = np.empty(manifest.total_bytes, np.uint8) if buffer is None else buffer
        view = data.data if isinstance(data, np.ndarray) else memoryview(data)
        self.buffer = view.cast("B")
        if len(self.buffer) != manifest.total_bytes:
            raise ValueError(f"buffer of {len(self.buffer)} bytes for a proxy set of {manifest.total_bytes}")
        self.backing = data  # keeps a memory map (or array) alive as long as the view
        self.held = np.zeros(manifest.n_chunks, dtype=bool)
        self.received = 0  # chunks taken by offer (not those found by resume)
        self.rejected: Counter[str] = Counter()

    @property
    def complete(self) -> bool:
        return bool(self.held.all())

    def missing(self) -> list[int]:
        """Indices of the chunks not held yet, in order."""
        return [int(i) for i in np.flatnonzero(~self.held)]

    def offer(self, chunk: ProxyChunk, index: int | None = None) -> str | None:
        """Take ``chunk`` if it verifies (``index``: the one its topic names); else the reason, counted."""
        reason = self._check(chunk, index)
        if reason is not None:
            self.rejected[reason] += 1
            return reason
        start, end = self.manifest.span(chunk.index)
        self.buffer[start:end] = chunk.data
        self.held[chunk.index] = True
        self.received += 1
        return None

    def _check(self, chunk: ProxyChunk, index: int | None) -> str | None:
        m = self.manifest
        if chunk.proxy_id != m.proxy_id:
            return "wrong_proxy"
        if not 0 <= chunk.index < m.n_chunks or (index is not None and index != chunk.index):
            return "bad_index"
        if self.held[chunk.index]:
            return "duplicate_chunk"
        start, end = m.span(chunk.index)
        if len(chunk.data) != end - start:
            return "bad_chunk_size"
        if hashlib.sha256(chunk.data).digest() != m.hashes[chunk.index]:
            return "bad_chunk_hash"
        return None

    def resume(self) -> int:
        """Mark every chunk already in the buffer whose hash verifies as held; returns how many."""
        for index in range(self.manifest.n_chunks):
            start, end = self.manifest.span(index)
            if not self.held[index] and hashlib.sha256(self.buffer[start:end]).digest() == self.manifest.hashes[index]:
                self.held[index] = True
        return int(self.held.sum())

    def verify(self) -> bool:
        """Whether the assembled bytes are the proxy set the manifest names (all chunks held)."""
        m = self.manifest
        return self.complete and content_id(m.dtype, m.shape, self.buffer) == m.proxy_id

    def array(self) -> np.ndarray:
        """The assembled proxy inputs: a view of the buffer in the manifest's dtype and shape."""
        m = self.manifest
        return np.frombuffer(self.buffer, dtype=ALLOWED_DTYPES[m.dtype]).reshape(m.shape)
