"""Where a client keeps the bytes of the proxy set it is receiving: memory, or a file that outlives it.

Without a state directory the buffer is plain memory. With one, it is ``<state_dir>/proxy-<id>.bin``,
memory-mapped: chunks are written into it as they verify, the assembled proxy set is a view of the
mapping (one copy, in the page cache, which the kernel may evict and read back), and a client
restarted mid-transfer re-verifies what the file holds chunk by chunk
(:meth:`~koala_async.core.proxy_assembly.ProxyAssembly.resume`) and fetches only the rest. Nothing
here needs fsync: a chunk torn by a power cut fails its hash and is fetched again.

Files of other proxy sets are removed when a new one is opened: a client keeps one proxy set on disk.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from koala_async.core.proxy_manifest import ProxyManifest

log = logging.getLogger(__name__)

PREFIX, SUFFIX = "proxy-", ".bin"


def proxy_file(state_dir: str | Path, proxy_id: str) -> Path:
    return Path(state_dir) / f"{PREFIX}{proxy_id}{SUFFIX}"


def open_buffer(manifest: ProxyManifest, state_dir: str | Path | None) -> np.ndarray:
    """A writable uint8 buffer of ``manifest.total_bytes``: a memory-mapped file under ``state_dir``
    (its earlier content kept when it has the right size), else memory (blocking: run it in a thread)."""
    total = manifest.total_bytes
    if state_dir is None:
        return np.empty(total, dtype=np.uint8)
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = proxy_file(directory, manifest.proxy_id)
    for other in directory.glob(f"{PREFIX}*{SUFFIX}"):
        if other != path:
            log.info("removing %s: the server's proxy set is now %s", other, manifest.proxy_id)
            other.unlink(missing_ok=True)
    keep = path.exists() and path.stat().st_size == total
    if not keep:
        with path.open("wb") as fh:  # sparse: no disk is used before chunks are written
            fh.truncate(total)
    return np.memmap(path, dtype=np.uint8, mode="r+", shape=(total,))


def flush(buffer: np.ndarray) -> None:
    """Write a memory-mapped buffer's pages out (nothing for memory)."""
    if isinstance(buffer, np.memmap):
        buffer.flush()
