"""A proxy set on the wire: a small signed manifest and content-addressed chunks.

A proxy set of real size (CIFAR-10's 50,000 training images are 146 MiB as uint8 pixels, four times
that as float32) does not fit one MQTT message: Mosquitto's ``max_packet_size`` (16 MiB in the shipped
``nodes/mosquitto.conf``) and a client's decode limit refuse it. So the server publishes, retained:

- a **manifest** on ``koala/<fed>/server/proxy`` (kind ``proxy_manifest``, sealed with the server's
  Ed25519 key like knowledge)::

      body = {"proxy": proxy_id, "dtype": "|u1", "shape": [50000, 3, 32, 32], "classes": 10,
              "chunk": 4194304, "hashes": [sha256 of chunk 0 (32 bytes), sha256 of chunk 1, ...]}

- one **chunk** per ``chunk`` bytes of the C-ordered array on ``koala/<fed>/server/proxy/<proxy_id>/<i>``
  (kind ``proxy_chunk``, not signed: a chunk is trusted because its SHA-256 is in the signed
  manifest)::

      body = {"proxy": proxy_id, "i": index, "data": raw bytes}

The data travels in its own dtype (uint8 pixels stay one byte each). ``proxy_id`` is
:func:`content_id`: the first 16 hex digits of SHA-256 over ``str((dtype, shape))`` and the bytes, so it
covers dtype, shape and content; a receiver checks every chunk against its hash and the assembled
whole against the id (:mod:`koala_async.core.proxy_assembly`).

This module is pure: the dataclasses, the body codec :mod:`~koala_async.core.envelope` calls, and the
hashing. Every decoding failure is a :class:`~koala_async.errors.MessageError`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from koala_async.core.arrays import ALLOWED_DTYPES
from koala_async.errors import MessageError

KIND_MANIFEST = "proxy_manifest"
KIND_CHUNK = "proxy_chunk"
HASH_BYTES = 32
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024  # a quarter of Mosquitto's max_packet_size in nodes/mosquitto.conf
# A proxy id is a topic level: hex only, so it can never hold '/', '+' or '#'.
_PROXY_ID = re.compile(r"^[0-9a-f]{8,64}$")


class ManifestLimits(Protocol):
    """The part of :class:`~koala_async.core.envelope.Limits` a manifest check reads."""

    @property
    def max_payload_bytes(self) -> int: ...

    @property
    def max_samples(self) -> int: ...

    @property
    def max_features(self) -> int: ...

    @property
    def max_classes(self) -> int: ...

    @property
    def max_proxy_bytes(self) -> int: ...


@dataclass(frozen=True)
class ProxyManifest:
    """What a proxy set is and how it is cut: enough to fetch, verify and assemble it."""

    sender: str
    seq: int
    proxy_id: str
    dtype: str  # wire dtype, a key of core.arrays.ALLOWED_DTYPES ("|u1", "<f4", ...)
    shape: tuple[int, ...]
    num_classes: int
    chunk_bytes: int
    hashes: tuple[bytes, ...]  # SHA-256 of each chunk, in order
    sent_at: float = 0.0
    epoch: int = 0  # the publishing server's run (core/server_signing.py)

    @property
    def total_bytes(self) -> int:
        return math.prod(self.shape) * np.dtype(ALLOWED_DTYPES[self.dtype]).itemsize

    @property
    def n_chunks(self) -> int:
        return len(self.hashes)

    def span(self, index: int) -> tuple[int, int]:
        """Byte range ``[start, end)`` of chunk ``index`` in the whole array."""
        start = index * self.chunk_bytes
        return start, min(start + self.chunk_bytes, self.total_bytes)


@dataclass(frozen=True)
class ProxyChunk:
    """Bytes ``[i * chunk, (i + 1) * chunk)`` of proxy set ``proxy_id``; ``data`` may be a memoryview
    of the server's array (no copy until it is encoded)."""

    sender: str
    seq: int
    proxy_id: str
    index: int
    data: bytes | memoryview
    sent_at: float = 0.0


# -- hashing and cutting -----------------------------------------------------------------------

def content_id(dtype: str, shape: tuple[int, ...], data: bytes | memoryview) -> str:
    """The proxy id: SHA-256 over ``str((dtype, shape))`` then the C-ordered bytes, first 16 hex digits."""
    h = hashlib.sha256(str((dtype, tuple(int(d) for d in shape))).encode())
    h.update(data)
    return h.hexdigest()[:16]


def wire_dtype(dtype: np.dtype[Any]) -> str:
    """``dtype`` as the manifest names it; ValueError for one that cannot be sent."""
    name = np.dtype(dtype).newbyteorder("<").str if np.dtype(dtype).byteorder == ">" else np.dtype(dtype).str
    if name not in ALLOWED_DTYPES:
        raise ValueError(f"a proxy set of dtype {name} cannot be sent; allowed: {sorted(ALLOWED_DTYPES)}")
    return name


def array_bytes(x: np.ndarray) -> memoryview:
    """The C-ordered bytes of ``x`` as a flat memoryview (no copy when ``x`` is contiguous)."""
    return np.ascontiguousarray(x).data.cast("B")


def build_manifest(x: np.ndarray, num_classes: int, chunk_bytes: int, sender: str, seq: int = 0,
                   sent_at: float = 0.0) -> ProxyManifest:
    """The manifest of array ``x`` cut into ``chunk_bytes`` chunks (hashes every chunk: about 0.3 s a
    150 MB proxy set)."""
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be >= 1")
    dtype = wire_dtype(x.dtype)
    data = array_bytes(x)
    hashes = tuple(hashlib.sha256(data[i:i + chunk_bytes]).digest() for i in range(0, len(data), chunk_bytes))
    shape = tuple(int(d) for d in x.shape)
    return ProxyManifest(sender=sender, seq=seq, proxy_id=content_id(dtype, shape, data), dtype=dtype,
                         shape=shape, num_classes=num_classes, chunk_bytes=chunk_bytes, hashes=hashes,
                         sent_at=sent_at)


def chunks(manifest: ProxyManifest, data: memoryview, sender: str, seq: int = 0,
           sent_at: float = 0.0) -> Iterator[ProxyChunk]:
    """Every chunk of ``data`` (the array's bytes) as a message whose ``data`` is a view, not a copy."""
    for index in range(manifest.n_chunks):
        start, end = manifest.span(index)
        yield ProxyChunk(sender=sender, seq=seq, proxy_id=manifest.proxy_id, index=index,
                         data=data[start:end], sent_at=sent_at)


# -- the body codec (called by core.envelope) ---------------------------------------------------

def encode_manifest(m: ProxyManifest) -> dict[str, Any]:
    return {"proxy": m.proxy_id, "dtype": m.dtype, "shape": list(m.shape), "classes": m.num_classes,
            "chunk": m.chunk_bytes, "hashes": list(m.hashes)}


def encode_chunk(c: ProxyChunk) -> dict[str, Any]:
    return {"proxy": c.proxy_id, "i": c.index, "data": c.data}


def _proxy_id(body: dict[str, Any], kind: str) -> str:
    value = body.get("proxy")
    if type(value) is not str or not _PROXY_ID.match(value):
        raise MessageError("bad_field", f"{kind}.proxy is not 8-64 lowercase hex digits")
    return value


def _count(value: Any, name: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise MessageError("bad_field", f"{name} is not an integer in [{low}, {high}]")
    return value


def decode_manifest(body: dict[str, Any], sender: str, seq: int, sent_at: float, epoch: int,
                    limits: ManifestLimits) -> ProxyManifest:
    kind = KIND_MANIFEST
    proxy_id = _proxy_id(body, kind)
    dtype = body.get("dtype")
    if type(dtype) is not str or dtype not in ALLOWED_DTYPES:
        raise MessageError("bad_dtype", f"{kind}.dtype is not one of {sorted(ALLOWED_DTYPES)}")
    shape = body.get("shape")
    if type(shape) is not list or not 2 <= len(shape) <= 4 or not all(type(d) is int and d > 0 for d in shape):
        raise MessageError("bad_array", f"{kind}.shape is not 2 to 4 positive integers")
    if shape[0] > limits.max_samples or math.prod(shape[1:]) > limits.max_features:
        raise MessageError("too_large", f"{kind}.shape {shape[:4]} is past the sample or feature limit")
    total = math.prod(shape) * np.dtype(ALLOWED_DTYPES[dtype]).itemsize
    if total > limits.max_proxy_bytes:
        raise MessageError("too_large", f"proxy set of {total} bytes > {limits.max_proxy_bytes}")
    classes = _count(body.get("classes"), f"{kind}.classes", 1, limits.max_classes)
    # a chunk and its envelope must fit one payload
    chunk = _count(body.get("chunk"), f"{kind}.chunk", 1, max(1, limits.max_payload_bytes - 1024))
    hashes = body.get("hashes")
    if type(hashes) is not list or len(hashes) != -(-total // chunk):
        raise MessageError("bad_field", f"{kind}.hashes must hold one hash per chunk ({-(-total // chunk)})")
    if not all(type(h) is bytes and len(h) == HASH_BYTES for h in hashes):
        raise MessageError("bad_field", f"{kind}.hashes must be {HASH_BYTES}-byte SHA-256 digests")
    return ProxyManifest(sender=sender, seq=seq, proxy_id=proxy_id, dtype=dtype, shape=tuple(shape),
                         num_classes=classes, chunk_bytes=chunk, hashes=tuple(hashes), sent_at=sent_at,
                         epoch=epoch)


def decode_chunk(body: dict[str, Any], sender: str, seq: int, sent_at: float) -> ProxyChunk:
    kind = KIND_CHUNK
    data = body.get("data")
    if type(data) is not bytes:
        raise MessageError("bad_field", f"{kind}.data is not bytes")
    return ProxyChunk(sender=sender, seq=seq, proxy_id=_proxy_id(body, kind),
                      index=_count(body.get("i"), f"{kind}.i", 0, 2**31), data=data, sent_at=sent_at)
