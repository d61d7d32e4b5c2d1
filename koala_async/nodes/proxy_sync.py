"""A client's proxy set: from the server's signed manifest to verified inputs, fetched or read locally.

The server publishes a manifest (retained, on ``koala/<fed>/server/proxy``) and the chunks
(retained, ``koala/<fed>/server/proxy/<proxy_id>/<i>``; core/proxy_manifest.py). The client's main
link subscribes to the manifest only; :class:`ProxySync` takes it from there:

- with ``proxy_path`` it reads the proxy set locally (learning/data.py ``load_proxy``) and uses it
  only when its proxy id is the manifest's, else raises :class:`~koala_async.errors.DataError`;
- otherwise it opens **fetch links** of its own (the node's transport factory, client id
  ``<node client id>-proxy``), one after the other, each subscribed to the next missing chunks, at
  most :data:`WINDOW_BYTES` of them: a broker sends retained messages as fast as it can on
  subscribe, and the transport reads them all before handing them on, so the window is what bounds
  the bytes in flight beside the one buffer. Each chunk passes the node's
  :class:`~koala_async.core.knowledge_gate.KnowledgeGate`, then its SHA-256 is checked against the
  manifest and it is written into the buffer (core/proxy_assembly.py; io/proxy_store.py: memory, or a
  memory-mapped file under ``state_dir``). When a link drops, it is closed and the next one
  subscribes to what is still missing: a chunk already held is never delivered again, and the
  retained chunks never cross the main link (acks and knowledge are not stuck behind 150 MB). Once
  complete the whole is verified against the proxy id.

A newer manifest (another proxy id) abandons the fetch in progress. Refused chunks are counted by
reason in :meth:`ProxySync.stats` (``proxy_chunks_refused``) and, except a harmless re-delivery
(``duplicate_chunk``), on the node's reject counter (``bad_chunk_hash``, ``bad_chunk_size``...).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from koala_async.core.envelope import ProxySet
from koala_async.core.proxy_assembly import ProxyAssembly
from koala_async.core.proxy_manifest import KIND_CHUNK, ProxyChunk, ProxyManifest
from koala_async.core.topics import Topics
from koala_async.errors import DataError
from koala_async.io import proxy_store
from koala_async.io.base import Incoming, LinkOptions, TransportFactory

if TYPE_CHECKING:
    from koala_async.core.knowledge_gate import KnowledgeGate
    from koala_async.core.rejects import RejectCounter
    from koala_async.nodes.config import ClientConfig

log = logging.getLogger(__name__)

# Chunk bytes one fetch link asks for at once (at least one chunk): 4 chunks of 4 MiB.
WINDOW_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class FetchLink:
    """How a proxy fetch reaches the broker: the node's transport factory and a client id of its own."""

    connect: TransportFactory
    client_id: str
    keepalive: int = 30


def same_cut(a: ProxyManifest, b: ProxyManifest) -> bool:
    """Whether two manifests describe the same chunks (a re-delivered manifest does; a new proxy does not)."""
    return (a.proxy_id, a.chunk_bytes, a.hashes) == (b.proxy_id, b.chunk_bytes, b.hashes)


class ProxySync:
    """Obtains the proxy set the latest manifest names; ``run`` is the node's long-lived task for it."""

    def __init__(self, config: ClientConfig, topics: Topics) -> None:
        self.config = config
        self.topics = topics
        self.manifest: ProxyManifest | None = None  # the newest from the server
        self.assembly: ProxyAssembly | None = None  # the transfer in progress (or done)
        self.held: str | None = None  # proxy id of the proxy set handed on
        self.links = 0  # fetch links opened
        self.links_lost = 0  # fetch links that dropped before their chunks were all in
        self.chunks_resumed = 0  # found valid on disk at start
        self.bytes_in = 0  # payload bytes of every message on the fetch links
        self._stir = asyncio.Event()

    def want(self, manifest: ProxyManifest) -> None:
        """The server's manifest arrived (on the event loop): fetch what it names unless already under way."""
        if self.manifest is None or not same_cut(self.manifest, manifest):
            self.manifest = manifest
            self._stir.set()

    def stats(self) -> dict[str, Any]:
        a = self.assembly
        return {"proxy_id": self.held, "proxy_links": self.links, "proxy_links_lost": self.links_lost,
                "proxy_chunks_resumed": self.chunks_resumed,
                "proxy_chunks_fetched": a.received if a else 0, "proxy_chunks_missing": len(a.missing()) if a else 0,
                "proxy_chunks_refused": dict(a.rejected) if a else {}}

    async def run(self, link: FetchLink, gate: KnowledgeGate, rejects: RejectCounter,
                  adopt: Callable[[ProxySet], None]) -> None:
        """Forever: wait for a manifest, obtain its proxy set, hand it to ``adopt``."""
        while True:
            await self._stir.wait()
            self._stir.clear()
            manifest = self.manifest
            if manifest is None or manifest.proxy_id == self.held:
                continue
            inputs = await self._obtain(manifest, link, gate, rejects)
            if inputs is None:  # superseded by a newer manifest, or refused whole: wait for the next
                continue
            self.held = manifest.proxy_id
            adopt(ProxySet(sender=manifest.sender, seq=manifest.seq, proxy_id=manifest.proxy_id, inputs=inputs,
                           num_classes=manifest.num_classes, sent_at=manifest.sent_at, epoch=manifest.epoch))

    async def _obtain(self, manifest: ProxyManifest, link: FetchLink, gate: KnowledgeGate,
                      rejects: RejectCounter) -> np.ndarray | None:
        if self.config.proxy_path:
            return await asyncio.to_thread(self._read_local, manifest)
        assembly = self.assembly
        if assembly is None or not same_cut(assembly.manifest, manifest):
            assembly = await asyncio.to_thread(self._open, manifest)
        if not await self._fetch(assembly, link, gate, rejects):
            return None
        if not await asyncio.to_thread(assembly.verify):
            # every chunk matched its hash, yet the whole is not the proxy id: the manifest contradicts itself
            log.error("proxy set %s: the assembled chunks do not hash to the proxy id; waiting for another "
                      "manifest", manifest.proxy_id)
            rejects.reject("proxy_id_mismatch", manifest.proxy_id, self.topics.proxy)
            self.assembly = None
            return None
        proxy_store.flush(assembly.backing)
        log.info("proxy set %s complete: %d chunks fetched over %d link(s), %d found on disk", manifest.proxy_id,
                 assembly.received, self.links, self.chunks_resumed)
        return assembly.array()

    def _read_local(self, manifest: ProxyManifest) -> np.ndarray:
        from koala_async.learning.data import load_proxy, proxy_id

        cfg = self.config
        assert cfg.proxy_path is not None
        x = load_proxy(cfg.proxy_path, cfg.seed, cfg.test_fraction, cfg.proxy_fraction)
        found = proxy_id(x)
        if found != manifest.proxy_id:
            raise DataError(f"proxy_path {cfg.proxy_path!r}: its proxy id is {found} ({x.dtype.str} "
                            f"{tuple(x.shape)}), the server's is {manifest.proxy_id} ({manifest.dtype} "
                            f"{manifest.shape}): not the server's proxy set (remove proxy_path to fetch it)")
        log.info("proxy set %s read from %s", found, cfg.proxy_path)
        return x

    def _open(self, manifest: ProxyManifest) -> ProxyAssembly:
        """A new assembly in a fresh buffer, or in the state directory's file with what it held (blocking)."""
        assembly = ProxyAssembly(manifest, proxy_store.open_buffer(manifest, self.config.state_dir))
        if self.config.state_dir:
            self.chunks_resumed = assembly.resume()
        self.assembly = assembly
        return assembly

    async def _fetch(self, assembly: ProxyAssembly, link: FetchLink, gate: KnowledgeGate,
                     rejects: RejectCounter) -> bool:
        """Fetch links until every chunk is held (True), or a new manifest supersedes this one (False)."""
        manifest = assembly.manifest
        per_link = max(1, WINDOW_BYTES // manifest.chunk_bytes)

        def superseded() -> bool:
            return self.manifest is not None and not same_cut(self.manifest, manifest)

        while not assembly.complete:
            if superseded():
                return False
            batch = assembly.missing()[:per_link]
            lost = asyncio.Event()

            def on_link(up: bool, detail: str, lost: asyncio.Event = lost) -> None:
                if not up:
                    lost.set()
                    self._stir.set()

            def take(msg: Incoming) -> None:
                self._take(assembly, gate, rejects, msg)

            subscriptions = tuple((self.topics.proxy_chunk(manifest.proxy_id, i), 1) for i in batch)
            self.links += 1
            log.debug("fetching chunks %d-%d (%d missing of %d) of proxy set %s", batch[0], batch[-1],
                      len(assembly.missing()), manifest.n_chunks, manifest.proxy_id)
            options = LinkOptions(link.client_id, subscriptions=subscriptions, handler=take, on_link=on_link,
                                  keepalive=link.keepalive)
            async with link.connect(options):
                while not (assembly.held[batch].all() or lost.is_set() or superseded()):
                    await self._stir.wait()
                    self._stir.clear()
            if lost.is_set() and not assembly.held[batch].all():
                self.links_lost += 1
        self._stir.set()  # whatever woke us meanwhile (a newer manifest) is looked at by run()
        return True

    def _take(self, assembly: ProxyAssembly, gate: KnowledgeGate, rejects: RejectCounter, msg: Incoming) -> None:
        """One message on the fetch link (called by the transport as it is read; never awaits)."""
        self.bytes_in += len(msg.payload)
        verdict = gate.check(msg.payload, KIND_CHUNK)
        chunk = verdict.message
        if not verdict.accepted or not isinstance(chunk, ProxyChunk):
            rejects.reject(verdict.reason, verdict.detail, msg.topic)
            return
        where = self.topics.chunk_of(msg.topic)
        if where is None or where[0] != assembly.manifest.proxy_id:
            assembly.rejected["wrong_proxy"] += 1
            reason: str | None = "wrong_proxy"
        else:
            reason = assembly.offer(chunk, where[1])
        if reason == "duplicate_chunk":  # a broker re-delivery (amqtt replays retained messages): harmless
            log.debug("chunk %d of proxy set %s came again", chunk.index, assembly.manifest.proxy_id)
        elif reason is not None:
            rejects.reject(reason, f"chunk {chunk.index}", msg.topic)
        else:
            self._stir.set()  # the fetch loop looks whether its window is complete
