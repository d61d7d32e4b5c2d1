"""The wire format: a versioned msgpack envelope with typed array fields.

Every message is a msgpack map::

    {"v": 1, "k": kind, "s": sender, "q": seq, "t": sent_at, "b": base_version, "body": {...}}

Arrays travel as ``{"dtype": "<f2", "shape": [n, c], "data": raw bytes}``. Decoding is strict: the
payload size, schema version, kind, field types, dtypes, shapes and finiteness are checked before any
caller sees the message, and every failure raises :class:`~koala_async.errors.MessageError` with a
short ``reason`` that nodes count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from koala_async.errors import MessageError

SCHEMA_VERSION = 1

KIND_UPDATE = "update"
KIND_KNOWLEDGE = "knowledge"
KIND_PROXY = "proxy"
KIND_STATUS = "status"
KIND_WEIGHTS = "weights"
KIND_ACK = "ack"
KINDS = (KIND_UPDATE, KIND_KNOWLEDGE, KIND_PROXY, KIND_STATUS, KIND_WEIGHTS, KIND_ACK)

# Federation modes (docs/scenarios.md): KOALA without rounds, KOALA in synchronous rounds, FedAvg.
MODES = ("async", "sync", "fedavg")

# Only these dtypes may cross the wire; anything else is a "bad_dtype".
ALLOWED_DTYPES = {"<f2": np.float16, "<f4": np.float32, "<u4": np.uint32, "|u1": np.uint8,
                  "<i8": np.int64}
_WIRE_DTYPES = {name: np.dtype(kind) for name, kind in ALLOWED_DTYPES.items()}
_FLOAT16 = np.dtype(np.float16)
_FINITE_F16_HIGH_BYTES = bytes(b for b in range(256) if b & 0x7C != 0x7C)


@dataclass(frozen=True)
class Limits:
    """Bounds applied to every incoming message before it is used."""

    max_payload_bytes: int = 8 * 1024 * 1024
    max_samples: int = 200_000
    max_classes: int = 1_000
    max_features: int = 1 << 20
    max_sender_len: int = 128
    max_seq: int = 2**53
    max_version: int = 2**53
    max_tensors: int = 256  # parameter tensors in one weights message
    max_name_len: int = 128


@dataclass(frozen=True)
class Update:
    """A client's logits on proxy samples, built on knowledge ``base_version``."""

    sender: str
    seq: int
    base_version: int
    tier: str
    n_samples: int
    proxy_id: str
    logits: np.ndarray  # (n, C) float16
    sample_ids: np.ndarray | None = None  # (n,) uint32 indices into the proxy set; None = all
    sent_at: float = 0.0
    label_counts: np.ndarray | None = None  # (C,) optional class histogram of the private shard


@dataclass(frozen=True)
class Knowledge:
    """The server's large-model logits on the whole proxy set at ``version``."""

    sender: str
    seq: int
    version: int
    proxy_id: str
    num_classes: int
    temperature: float
    logits: np.ndarray | None  # (N, C) float16; None before the first distillation
    accepted_tiers: tuple[str, ...] = ()
    sent_at: float = 0.0
    mode: str = "async"  # "sync": the version is a round; clients train once per version


@dataclass(frozen=True)
class ProxySet:
    """The unlabeled proxy inputs, identified by a content hash."""

    sender: str
    seq: int
    proxy_id: str
    inputs: np.ndarray  # (N, *feature_shape)
    num_classes: int
    sent_at: float = 0.0


@dataclass(frozen=True)
class Status:
    """Presence and progress of a node (retained; the last will says ``online=False``)."""

    sender: str
    seq: int
    role: str
    online: bool
    state: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    sent_at: float = 0.0


@dataclass(frozen=True)
class Ack:
    """The server's verdict on one update, sent to the client that published it (QoS 1, not retained).

    ``update_seq`` is the update's sequence number; ``reason`` is ``"accepted"`` or the admission
    reason it was refused under; ``version`` is the server's knowledge version at admission.
    """

    sender: str
    seq: int
    client: str
    update_seq: int
    accepted: bool
    reason: str
    version: int
    staleness: int = 0
    sent_at: float = 0.0


@dataclass(frozen=True)
class Weights:
    """Full model weights (FedAvg): a client's locally trained model built on global ``base_version``,
    or the server's global model at ``base_version``. ``params`` maps parameter name -> float32 array;
    whether names and shapes fit the architecture ``model`` is checked by
    :func:`koala_async.core.weights.check_weights`, which needs the expected shapes."""

    sender: str
    seq: int
    base_version: int
    model: str
    n_samples: int
    params: dict[str, np.ndarray]
    sent_at: float = 0.0


Message = Update | Knowledge | ProxySet | Status | Weights | Ack


# -- arrays ------------------------------------------------------------------------------------

def pack_array(array: np.ndarray) -> dict[str, Any]:
    """Encode an array as ``{dtype, shape, data}`` with little-endian, C-ordered bytes."""
    arr = np.ascontiguousarray(array)
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    arr = arr.astype(dtype, copy=False)
    if dtype.str not in ALLOWED_DTYPES:
        raise ValueError(f"dtype {dtype.str} cannot be sent; allowed: {sorted(ALLOWED_DTYPES)}")
    return {"dtype": dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}


def unpack_array(obj: Any, name: str, limits: Limits) -> np.ndarray:
    """Decode and check one typed array field; raises ``MessageError`` on any inconsistency."""
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise MessageError("bad_array", f"{name} is not a {{dtype, shape, data}} map")
    dtype_str, shape, data = obj["dtype"], obj["shape"], obj["data"]
    dtype = _WIRE_DTYPES.get(dtype_str) if isinstance(dtype_str, str) else None
    if dtype is None:
        raise MessageError("bad_dtype", f"{name} has dtype {dtype_str!r}")
    # type() is int: bool (a subclass of int) is not a dimension
    if (type(shape) is not list or not 1 <= len(shape) <= 4
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise MessageError("bad_array", f"{name} has shape {shape!r}")
    if not isinstance(data, bytes):
        raise MessageError("bad_array", f"{name} data is not bytes")
    count = math.prod(shape)
    if count * dtype.itemsize != len(data):
        raise MessageError("shape_mismatch",
                           f"{name}: shape {shape} needs {count * dtype.itemsize} bytes, got {len(data)}")
    if shape[0] > limits.max_samples:
        raise MessageError("too_many_samples", f"{name} has {shape[0]} rows > {limits.max_samples}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    if dtype == _FLOAT16:
        # inf or NaN has all five exponent bits set: in little-endian '<f2' they are bits 0x7C of
        # each odd byte. Deleting every byte without them leaves nothing for a finite array. Every
        # update carries one (on the server's ingest path), and this costs half of what a NumPy
        # bit test did measured inside the running server (5 vs 11 us for 450x10).
        if data[1::2].translate(None, _FINITE_F16_HIGH_BYTES):
            raise MessageError("non_finite", f"{name} holds NaN or inf")
    elif array.dtype.kind == "f" and not np.isfinite(array).all():
        raise MessageError("non_finite", f"{name} holds NaN or inf")
    return array


# -- envelope ----------------------------------------------------------------------------------

def _header(kind: str, sender: str, seq: int, base_version: int, sent_at: float) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "k": kind, "s": sender, "q": seq, "b": base_version, "t": sent_at}


def encode(message: Message) -> bytes:
    """Serialise a message to msgpack bytes."""
    body: dict[str, Any]
    if isinstance(message, Update):
        body = {"tier": message.tier, "n": message.n_samples, "proxy": message.proxy_id,
                "logits": pack_array(message.logits.astype(np.float16, copy=False))}
        if message.sample_ids is not None:
            body["ids"] = pack_array(message.sample_ids.astype(np.uint32, copy=False))
        if message.label_counts is not None:
            body["labels"] = pack_array(message.label_counts.astype(np.uint32, copy=False))
        head = _header(KIND_UPDATE, message.sender, message.seq, message.base_version, message.sent_at)
    elif isinstance(message, Knowledge):
        body = {"proxy": message.proxy_id, "classes": message.num_classes,
                "temperature": float(message.temperature), "tiers": list(message.accepted_tiers),
                "logits": None if message.logits is None
                else pack_array(message.logits.astype(np.float16, copy=False))}
        if message.mode != "async":  # absent means async: older decoders and payloads stay valid
            body["mode"] = message.mode
        head = _header(KIND_KNOWLEDGE, message.sender, message.seq, message.version, message.sent_at)
    elif isinstance(message, ProxySet):
        body = {"proxy": message.proxy_id, "classes": message.num_classes,
                "inputs": pack_array(message.inputs)}
        head = _header(KIND_PROXY, message.sender, message.seq, 0, message.sent_at)
    elif isinstance(message, Status):
        body = {"role": message.role, "online": message.online, "state": message.state,
                "info": message.info}
        head = _header(KIND_STATUS, message.sender, message.seq, 0, message.sent_at)
    elif isinstance(message, Ack):
        body = {"client": message.client, "update_seq": message.update_seq, "accepted": message.accepted,
                "reason": message.reason, "staleness": message.staleness}
        head = _header(KIND_ACK, message.sender, message.seq, message.version, message.sent_at)
    elif isinstance(message, Weights):
        body = {"model": message.model, "n": message.n_samples,
                "params": {name: pack_array(np.asarray(value, dtype=np.float32))
                           for name, value in message.params.items()}}
        head = _header(KIND_WEIGHTS, message.sender, message.seq, message.base_version, message.sent_at)
    else:  # pragma: no cover - guarded by typing
        raise TypeError(f"cannot encode {type(message).__name__}")
    head["body"] = body
    return msgpack.packb(head, use_bin_type=True)


def _get(body: dict[str, Any], key: str, types: type | tuple[type, ...], kind: str) -> Any:
    if key not in body:
        raise MessageError("missing_field", f"{kind}.{key}")
    value = body[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise MessageError("bad_field", f"{kind}.{key} is a bool")
    if not isinstance(value, types):
        raise MessageError("bad_field", f"{kind}.{key} is {type(value).__name__}")
    return value


def _int(value: Any, name: str, upper: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= upper:
        raise MessageError("bad_field", f"{name}={value!r} is not an integer in [0, {upper}]")
    return value


def decode(payload: bytes, limits: Limits = Limits()) -> Message:
    """Parse and validate a payload; raise ``MessageError(reason)`` if anything is off."""
    if len(payload) > limits.max_payload_bytes:
        raise MessageError("too_large", f"{len(payload)} bytes > {limits.max_payload_bytes}")
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=True,
                              max_bin_len=limits.max_payload_bytes, max_str_len=1 << 16,
                              max_array_len=1 << 16, max_map_len=1 << 12)
    except Exception as exc:  # msgpack raises many types; all mean the same thing here
        raise MessageError("not_msgpack", type(exc).__name__) from None
    if not isinstance(raw, dict):
        raise MessageError("not_a_map", type(raw).__name__)
    version = raw.get("v")
    if version != SCHEMA_VERSION:
        raise MessageError("unknown_schema", f"v={version!r}")
    kind = raw.get("k")
    if kind not in KINDS:
        raise MessageError("unknown_kind", f"k={kind!r}")
    sender = raw.get("s")
    if not isinstance(sender, str) or not 0 < len(sender) <= limits.max_sender_len:
        raise MessageError("bad_field", "sender")
    seq = _int(raw.get("q"), "seq", limits.max_seq)
    base = _int(raw.get("b"), "base_version", limits.max_version)
    sent_at = raw.get("t", 0.0)
    if not isinstance(sent_at, (int, float)) or isinstance(sent_at, bool) or not math.isfinite(sent_at):
        raise MessageError("bad_field", "sent_at")
    body = raw.get("body")
    if not isinstance(body, dict):
        raise MessageError("missing_field", "body")

    if kind == KIND_UPDATE:
        logits = unpack_array(_get(body, "logits", dict, kind), "logits", limits)
        if logits.ndim != 2 or logits.dtype != _FLOAT16:
            raise MessageError("bad_array", f"logits must be 2-D float16, got {logits.dtype}{logits.shape}")
        if not 1 <= logits.shape[1] <= limits.max_classes:
            raise MessageError("class_count", f"{logits.shape[1]} classes")
        ids = None
        if body.get("ids") is not None:
            ids = unpack_array(body["ids"], "ids", limits)
            if ids.dtype != np.uint32 or ids.shape != (logits.shape[0],):
                raise MessageError("shape_mismatch", "ids must be uint32 with one id per logits row")
        labels = None
        if body.get("labels") is not None:
            labels = unpack_array(body["labels"], "labels", limits)
            if labels.dtype != np.uint32:
                raise MessageError("bad_dtype", f"labels must be uint32 counts, got {labels.dtype}")
            if labels.shape != (logits.shape[1],):
                raise MessageError("shape_mismatch", "labels must hold one count per class")
        tier = _get(body, "tier", str, kind)
        return Update(sender=sender, seq=seq, base_version=base, tier=tier[:64],
                      n_samples=_int(body.get("n"), "n_samples", 1 << 40),
                      proxy_id=_get(body, "proxy", str, kind), logits=logits, sample_ids=ids,
                      sent_at=float(sent_at), label_counts=labels)
    if kind == KIND_KNOWLEDGE:
        classes = _int(body.get("classes"), "classes", limits.max_classes)
        temperature = _get(body, "temperature", (int, float), kind)
        if not math.isfinite(temperature) or temperature <= 0:
            raise MessageError("bad_field", "temperature")
        k_logits = None
        if body.get("logits") is not None:
            k_logits = unpack_array(body["logits"], "logits", limits)
            if k_logits.ndim != 2 or k_logits.shape[1] != classes:
                raise MessageError("class_count", f"knowledge logits {k_logits.shape} vs {classes} classes")
        tiers = body.get("tiers", [])
        if not isinstance(tiers, list) or not all(isinstance(t, str) for t in tiers):
            raise MessageError("bad_field", "knowledge.tiers")
        mode = body.get("mode", "async")
        if mode not in MODES:
            raise MessageError("bad_field", f"knowledge.mode={mode!r}")
        return Knowledge(sender=sender, seq=seq, version=base, proxy_id=_get(body, "proxy", str, kind),
                         num_classes=classes, temperature=float(temperature), logits=k_logits,
                         accepted_tiers=tuple(tiers), sent_at=float(sent_at), mode=mode)
    if kind == KIND_WEIGHTS:
        return _decode_weights(body, sender, seq, base, float(sent_at), limits)
    if kind == KIND_PROXY:
        inputs = unpack_array(_get(body, "inputs", dict, kind), "inputs", limits)
        if inputs.dtype.kind != "f" or inputs.ndim < 2 or math.prod(inputs.shape[1:]) > limits.max_features:
            raise MessageError("bad_array", f"proxy inputs {inputs.dtype}{inputs.shape}")
        return ProxySet(sender=sender, seq=seq, proxy_id=_get(body, "proxy", str, kind), inputs=inputs,
                        num_classes=_int(body.get("classes"), "classes", limits.max_classes),
                        sent_at=float(sent_at))
    if kind == KIND_ACK:
        return Ack(sender=sender, seq=seq, client=_get(body, "client", str, kind)[:128],
                   update_seq=_int(body.get("update_seq"), "update_seq", limits.max_seq),
                   accepted=_get(body, "accepted", bool, kind), reason=_get(body, "reason", str, kind)[:64],
                   version=base, staleness=_int(body.get("staleness"), "staleness", limits.max_version),
                   sent_at=float(sent_at))
    info = body.get("info", {})
    if not isinstance(info, dict):
        raise MessageError("bad_field", "status.info")
    return Status(sender=sender, seq=seq, role=_get(body, "role", str, kind),
                  online=_get(body, "online", bool, kind), state=str(body.get("state", ""))[:256],
                  info=info, sent_at=float(sent_at))


def _decode_weights(body: dict[str, Any], sender: str, seq: int, base: int, sent_at: float,
                    limits: Limits) -> Weights:
    params_raw = _get(body, "params", dict, KIND_WEIGHTS)
    if not 0 < len(params_raw) <= limits.max_tensors:
        raise MessageError("bad_weights", f"{len(params_raw)} tensors (1..{limits.max_tensors} allowed)")
    params: dict[str, np.ndarray] = {}
    for name, packed in params_raw.items():
        if not isinstance(name, str) or not 0 < len(name) <= limits.max_name_len:
            raise MessageError("bad_weights", f"parameter name {str(name)[:40]!r}")
        array = unpack_array(packed, name, limits)
        if array.dtype != np.float32:
            raise MessageError("bad_dtype", f"parameter {name} is {array.dtype}, weights travel as float32")
        params[name] = array
    model = _get(body, "model", str, KIND_WEIGHTS)
    if not 0 < len(model) <= 64:
        raise MessageError("bad_field", "weights.model")
    return Weights(sender=sender, seq=seq, base_version=base, model=model,
                   n_samples=_int(body.get("n"), "n_samples", 1 << 40), params=params, sent_at=sent_at)
