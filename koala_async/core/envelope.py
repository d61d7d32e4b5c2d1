"""The wire format: a versioned msgpack envelope with typed array fields.

Every message is a msgpack map::

    {"v": 1, "k": kind, "s": sender, "q": seq, "t": sent_at, "b": base_version, "e": epoch, "body": {...}}

``e`` (the publishing server's run, see core/server_signing.py) is present only when non-zero, so
payloads without it stay valid. Arrays travel as ``{"dtype": "<f2", "shape": [n, c], "data": raw
bytes}`` (core/arrays.py). Decoding is strict and bounded: the payload size, nesting depth and object
count (core/bounded.py), schema version, kind, field types, dtypes, shapes, finiteness and the size of
a status's ``info`` (core/info.py) are checked before any caller sees the message, and every failure
raises :class:`~koala_async.errors.MessageError` with a short ``reason`` that nodes count. An update
with no rows or ``n_samples == 0`` is ``empty_update``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from koala_async.core import bounded, proxy_manifest
from koala_async.core.arrays import ALLOWED_DTYPES, pack_array, unpack_array
from koala_async.core.info import check_info, fit_info
from koala_async.core.limits import Limits
from koala_async.core.modes import MODES
from koala_async.core.proxy_manifest import KIND_CHUNK, KIND_MANIFEST, ProxyChunk, ProxyManifest
from koala_async.core.proxy_schedule import unpack_ids
from koala_async.core.splits import SplitSpec
from koala_async.errors import MessageError

__all__ = ["ALLOWED_DTYPES", "KINDS", "MODES", "Ack", "Knowledge", "Limits", "Message", "ProxyChunk",
           "ProxyManifest", "ProxySet", "Status", "Update", "Weights", "decode", "encode", "pack_array",
           "unpack_array"]

SCHEMA_VERSION = 1

KIND_UPDATE = "update"
KIND_KNOWLEDGE = "knowledge"
KIND_PROXY = "proxy"
KIND_STATUS = "status"
KIND_WEIGHTS = "weights"
KIND_ACK = "ack"
# A proxy set travels as a manifest plus chunks (core/proxy_manifest.py); KIND_PROXY is the one-message form.
KINDS = (KIND_UPDATE, KIND_KNOWLEDGE, KIND_PROXY, KIND_STATUS, KIND_WEIGHTS, KIND_ACK, KIND_MANIFEST, KIND_CHUNK)

_FLOAT16 = np.dtype(np.float16)
DEFAULT_LIMITS = Limits()
MAX_SUPERSEDED = 64  # sequence numbers one update may say it supersedes (core/delivery.MAX_CARRIED)


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
    # Older updates of this sender that this one replaces before their verdict came (core/delivery.py).
    supersedes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Knowledge:
    """The server's large-model logits at ``version``: on the whole proxy set, or with ``ids`` on the
    proxy samples the server scheduled for this version (core/proxy_schedule.py), which the updates
    built on it must label."""

    sender: str
    seq: int
    version: int
    proxy_id: str
    num_classes: int
    temperature: float
    logits: np.ndarray | None  # (N, C) float16, or (len(ids), C); None before the first distillation
    accepted_tiers: tuple[str, ...] = ()
    sent_at: float = 0.0
    mode: str = "async"  # "sync": the version is a round; clients train once per version
    # Which run of the server published it (core/server_signing.py: (epoch, version) never goes back).
    epoch: int = 0
    ids: np.ndarray | None = None  # (n,) sorted uint32: the scheduled proxy samples; None = all of them
    # The split the server derived its proxy, validation and test sets with (core/splits.py): a client
    # whose shard was derived otherwise refuses to train. None: explicit files, nothing to check.
    split: SplitSpec | None = None


@dataclass(frozen=True)
class ProxySet:
    """The unlabeled proxy inputs, identified by a content hash."""

    sender: str
    seq: int
    proxy_id: str
    inputs: np.ndarray  # (N, *feature_shape), in its own dtype (uint8 pixels are read as x / 255)
    num_classes: int
    sent_at: float = 0.0
    epoch: int = 0  # the publishing server's run, as Knowledge.epoch


@dataclass(frozen=True)
class Status:
    """Presence and progress of a node (retained; the last will says ``online=False``).

    ``info`` is bounded (core/info.py): :func:`encode` cuts it to ``InfoLimits()`` and :func:`decode`
    refuses one past the limits."""

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
    epoch: int = 0  # the server's global model: its run, as Knowledge.epoch; clients send 0


Message = Update | Knowledge | ProxySet | Status | Weights | Ack | ProxyManifest | ProxyChunk


# -- envelope ----------------------------------------------------------------------------------

def _header(kind: str, sender: str, seq: int, base_version: int, sent_at: float,
            epoch: int = 0) -> dict[str, Any]:
    head = {"v": SCHEMA_VERSION, "k": kind, "s": sender, "q": seq, "b": base_version, "t": sent_at}
    if epoch:  # absent means 0: older decoders and payloads stay valid
        head["e"] = epoch
    return head


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
        if message.supersedes:  # absent means none: older decoders and payloads stay valid
            body["sup"] = list(message.supersedes)
        head = _header(KIND_UPDATE, message.sender, message.seq, message.base_version, message.sent_at)
    elif isinstance(message, Knowledge):
        body = {"proxy": message.proxy_id, "classes": message.num_classes,
                "temperature": float(message.temperature), "tiers": list(message.accepted_tiers),
                "logits": None if message.logits is None
                else pack_array(message.logits.astype(np.float16, copy=False))}
        if message.mode != "async":  # absent means async: older decoders and payloads stay valid
            body["mode"] = message.mode
        if message.ids is not None:
            body["ids"] = pack_array(message.ids.astype(np.uint32, copy=False))
        if message.split is not None:
            body["split"] = message.split.to_map()
        head = _header(KIND_KNOWLEDGE, message.sender, message.seq, message.version, message.sent_at,
                       message.epoch)
    elif isinstance(message, ProxySet):
        body = {"proxy": message.proxy_id, "classes": message.num_classes,
                "inputs": pack_array(message.inputs)}
        head = _header(KIND_PROXY, message.sender, message.seq, 0, message.sent_at, message.epoch)
    elif isinstance(message, ProxyManifest):
        body = proxy_manifest.encode_manifest(message)
        head = _header(KIND_MANIFEST, message.sender, message.seq, 0, message.sent_at, message.epoch)
    elif isinstance(message, ProxyChunk):
        body = proxy_manifest.encode_chunk(message)
        head = _header(KIND_CHUNK, message.sender, message.seq, 0, message.sent_at)
    elif isinstance(message, Status):
        body = {"role": message.role, "online": message.online, "state": message.state,
                "info": fit_info(message.info)}
        head = _header(KIND_STATUS, message.sender, message.seq, 0, message.sent_at)
    elif isinstance(message, Ack):
        body = {"client": message.client, "update_seq": message.update_seq, "accepted": message.accepted,
                "reason": message.reason, "staleness": message.staleness}
        head = _header(KIND_ACK, message.sender, message.seq, message.version, message.sent_at)
    elif isinstance(message, Weights):
        body = {"model": message.model, "n": message.n_samples,
                "params": {name: pack_array(np.asarray(value, dtype=np.float32))
                           for name, value in message.params.items()}}
        head = _header(KIND_WEIGHTS, message.sender, message.seq, message.base_version, message.sent_at,
                       message.epoch)
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
    if type(value) is not int or not 0 <= value <= upper:
        shown = value if type(value) is int else f"a {type(value).__name__}"
        raise MessageError("bad_field", f"{name}={shown} is not an integer in [0, {upper}]")
    return value


def decode(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Parse and validate a payload; raise ``MessageError(reason)`` if anything is off.

    Nothing else escapes: the unpack is bounded in depth and object count (``too_deep``,
    ``too_large``), no untrusted value is ever passed to ``str``/``repr``, and any other exception
    a validation step might still raise is filed as ``malformed`` rather than left to crash a node.
    """
    if len(payload) > limits.max_payload_bytes:
        raise MessageError("too_large", f"{len(payload)} bytes > {limits.max_payload_bytes}")
    raw = bounded.unpack(payload, max_depth=limits.max_depth, max_objects=limits.max_objects,
                         max_bin_len=limits.max_payload_bytes)
    try:
        return _decode_map(raw, limits)
    except MessageError:
        raise
    except Exception as exc:  # noqa: BLE001 - a check we missed: count it, never crash a node over it
        raise MessageError("malformed", type(exc).__name__) from None


def _decode_map(raw: Any, limits: Limits) -> Message:
    if type(raw) is not dict:
        raise MessageError("not_a_map", type(raw).__name__)
    version = raw.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise MessageError("unknown_schema", f"v={version}" if type(version) is int else "v missing")
    kind = raw.get("k")
    if type(kind) is not str or kind not in KINDS:
        raise MessageError("unknown_kind", f"k={kind[:20]!r}" if type(kind) is str else "k missing")
    sender = raw.get("s")
    if type(sender) is not str or not 0 < len(sender) <= limits.max_sender_len:
        raise MessageError("bad_field", "sender")
    seq = _int(raw.get("q"), "seq", limits.max_seq)
    base = _int(raw.get("b"), "base_version", limits.max_version)
    epoch = _int(raw.get("e", 0), "epoch", limits.max_version)
    sent_at = raw.get("t", 0.0)
    if type(sent_at) not in (int, float) or not math.isfinite(sent_at):
        raise MessageError("bad_field", "sent_at")
    body = raw.get("body")
    if type(body) is not dict:
        raise MessageError("missing_field", "body")

    if kind == KIND_UPDATE:
        return _decode_update(body, sender, seq, base, float(sent_at), limits)
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
        k_ids = None if body.get("ids") is None else unpack_ids(body["ids"], k_logits, limits)
        tiers = body.get("tiers", [])
        if type(tiers) is not list or not all(type(t) is str for t in tiers):
            raise MessageError("bad_field", "knowledge.tiers")
        mode = body.get("mode", "async")
        if type(mode) is not str or mode not in MODES:
            raise MessageError("bad_field", "knowledge.mode")
        split = None
        if body.get("split") is not None:
            try:
                split = SplitSpec.from_map(body["split"])
            except ValueError as exc:
                raise MessageError("bad_field", f"knowledge.{exc}") from None
        return Knowledge(sender=sender, seq=seq, version=base, proxy_id=_get(body, "proxy", str, kind),
                         num_classes=classes, temperature=float(temperature), logits=k_logits,
                         accepted_tiers=tuple(tiers), sent_at=float(sent_at), mode=mode, epoch=epoch,
                         ids=k_ids, split=split)
    if kind == KIND_WEIGHTS:
        return _decode_weights(body, sender, seq, base, float(sent_at), epoch, limits)
    if kind == KIND_PROXY:
        inputs = unpack_array(_get(body, "inputs", dict, kind), "inputs", limits)
        if inputs.dtype.char not in "efB" or inputs.ndim < 2 or math.prod(inputs.shape[1:]) > limits.max_features:
            raise MessageError("bad_array", f"proxy inputs {inputs.dtype}{inputs.shape}")
        return ProxySet(sender=sender, seq=seq, proxy_id=_get(body, "proxy", str, kind), inputs=inputs,
                        num_classes=_int(body.get("classes"), "classes", limits.max_classes),
                        sent_at=float(sent_at), epoch=epoch)
    if kind == KIND_MANIFEST:
        return proxy_manifest.decode_manifest(body, sender, seq, float(sent_at), epoch, limits)
    if kind == KIND_CHUNK:
        return proxy_manifest.decode_chunk(body, sender, seq, float(sent_at))
    if kind == KIND_ACK:
        return Ack(sender=sender, seq=seq, client=_get(body, "client", str, kind)[:128],
                   update_seq=_int(body.get("update_seq"), "update_seq", limits.max_seq),
                   accepted=_get(body, "accepted", bool, kind), reason=_get(body, "reason", str, kind)[:64],
                   version=base, staleness=_int(body.get("staleness"), "staleness", limits.max_version),
                   sent_at=float(sent_at))
    info = check_info(body.get("info", {}), limits.info)
    return Status(sender=sender, seq=seq, role=_get(body, "role", str, kind)[:64],
                  online=_get(body, "online", bool, kind), state=_get(body, "state", str, kind)[:256]
                  if "state" in body else "", info=info, sent_at=float(sent_at))


def _decode_update(body: dict[str, Any], sender: str, seq: int, base: int, sent_at: float,
                   limits: Limits) -> Update:
    kind = KIND_UPDATE
    logits = unpack_array(_get(body, "logits", dict, kind), "logits", limits)
    if logits.ndim != 2 or logits.dtype != _FLOAT16:
        raise MessageError("bad_array", f"logits must be 2-D float16, got {logits.dtype}{logits.shape}")
    if not 1 <= logits.shape[1] <= limits.max_classes:
        raise MessageError("class_count", f"{logits.shape[1]} classes")
    if logits.shape[0] == 0:  # would bump the version and wipe the sender's contribution with nothing
        raise MessageError("empty_update", "no logits rows")
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
    n_samples = _int(body.get("n"), "n_samples", 1 << 40)
    if n_samples == 0:
        raise MessageError("empty_update", "n_samples is 0")
    tier = _get(body, "tier", str, kind)
    supersedes = body.get("sup", [])
    if type(supersedes) is not list or len(supersedes) > MAX_SUPERSEDED:
        raise MessageError("bad_field", f"update.sup is not a list of at most {MAX_SUPERSEDED} numbers")
    return Update(sender=sender, seq=seq, base_version=base, tier=tier[:64], n_samples=n_samples,
                  proxy_id=_get(body, "proxy", str, kind), logits=logits, sample_ids=ids,
                  sent_at=sent_at, label_counts=labels,
                  supersedes=tuple(_int(v, "update.sup", limits.max_seq) for v in supersedes))


def _decode_weights(body: dict[str, Any], sender: str, seq: int, base: int, sent_at: float, epoch: int,
                    limits: Limits) -> Weights:
    params_raw = _get(body, "params", dict, KIND_WEIGHTS)
    if not 0 < len(params_raw) <= limits.max_tensors:
        raise MessageError("bad_weights", f"{len(params_raw)} tensors (1..{limits.max_tensors} allowed)")
    params: dict[str, np.ndarray] = {}
    for name, packed in params_raw.items():
        if not isinstance(name, str) or not 0 < len(name) <= limits.max_name_len:
            raise MessageError("bad_weights", "a parameter name is not 1 to "
                                              f"{limits.max_name_len} characters")
        array = unpack_array(packed, name, limits)
        if array.dtype != np.float32:
            raise MessageError("bad_dtype", f"parameter {name} is {array.dtype}, weights travel as float32")
        params[name] = array
    model = _get(body, "model", str, KIND_WEIGHTS)
    if not 0 < len(model) <= 64:
        raise MessageError("bad_field", "weights.model")
    return Weights(sender=sender, seq=seq, base_version=base, model=model,
                   n_samples=_int(body.get("n"), "n_samples", 1 << 40), params=params, sent_at=sent_at,
                   epoch=epoch)
