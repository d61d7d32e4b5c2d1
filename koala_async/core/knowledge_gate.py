"""What a client takes from the server's topics: a pure gate over signature, sender and ordering.

A client holds one :class:`KnowledgeGate` and passes it every payload that arrives on a server topic
(knowledge, proxy manifest and chunks, global model, server status, and its own ack topic). ``check`` returns a
:class:`GateVerdict`: the decoded message when it is accepted, or the reason it is refused (to count):

- any :class:`~koala_async.errors.MessageError` reason of decoding (``not_msgpack``, ``too_deep``...);
- ``unsigned``: a server key is pinned and a knowledge, proxy, proxy manifest or weights message
  carries no signature (proxy chunks are not signed: each is checked against its SHA-256 in the
  signed manifest, core/proxy_assembly.py); ``bad_signature``: a signature that no pinned key verifies (forged, altered, another
  key), whatever the kind;
- ``wrong_kind``: not the kind the topic carries; ``wrong_sender``: not from the expected server id;
- ``version_regressed``: with a pinned key, knowledge or weights whose ``(epoch, version)`` is below
  the highest accepted for that kind, or a proxy set or manifest (or anything versioned) whose ``epoch`` is below
  the highest epoch accepted. A replay of an older signed message is refused this way. Equal
  ``(epoch, version)`` passes: the broker re-delivers the retained message on every reconnect.

The epoch is the server's run (core/server_signing.py ``next_epoch``): a server restarted without
state starts again at version 0 but with a higher epoch, so its knowledge is still newer. Without a
pinned key the gate only checks decoding, kind and sender: the epoch and version could be forged by
anyone, and refusing on them would let a forger lock the real server out.

The gate's high-water marks live in memory; ``to_state``/``from_state`` let a client keep them
across its restarts (a fresh client otherwise accepts any correctly signed retained message once,
and moves on at the server's next publication).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from koala_async.core.envelope import (
    KIND_ACK,
    KIND_KNOWLEDGE,
    KIND_PROXY,
    KIND_STATUS,
    KIND_WEIGHTS,
    Ack,
    Knowledge,
    Limits,
    Message,
    ProxySet,
    Status,
    Update,
    Weights,
    decode,
)
from koala_async.core.proxy_manifest import KIND_CHUNK, KIND_MANIFEST, ProxyChunk, ProxyManifest
from koala_async.core.server_signing import Ed25519PublicKey, is_sealed, open_sealed
from koala_async.errors import MessageError

_KIND_OF = {Update: "update", Knowledge: KIND_KNOWLEDGE, ProxySet: KIND_PROXY, Status: KIND_STATUS,
            Weights: KIND_WEIGHTS, Ack: KIND_ACK, ProxyManifest: KIND_MANIFEST, ProxyChunk: KIND_CHUNK}
SIGNED_KINDS = (KIND_KNOWLEDGE, KIND_PROXY, KIND_WEIGHTS, KIND_MANIFEST)


@dataclass(frozen=True)
class GateVerdict:
    """``accepted`` with the decoded ``message``, or refused for ``reason`` (``detail`` for logs)."""

    accepted: bool
    reason: str = "accepted"
    message: Message | None = None
    detail: str = ""


@dataclass
class KnowledgeGate:
    """A client's view of the server: which server id and keys to trust, and the newest seen.

    ``keys`` empty: nothing is pinned (accept as before, but only from ``server_id``). ``context`` is
    the federation name the server signs under. ``signed_kinds`` must carry a signature when a key is
    pinned; status and ack messages may, and are verified when they do.
    """

    server_id: str
    keys: Sequence[Ed25519PublicKey] = ()
    context: str = ""
    limits: Limits = field(default_factory=Limits)
    signed_kinds: tuple[str, ...] = SIGNED_KINDS
    epoch: int = 0  # highest epoch accepted (pinned only)
    highs: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (epoch, version)

    @property
    def pinned(self) -> bool:
        return bool(self.keys)

    def check(self, payload: bytes, expected_kind: str | None = None) -> GateVerdict:
        """Verify, decode and order one payload from a server topic; accepted ones raise the marks."""
        try:
            envelope = open_sealed(payload, self.keys, self.context) if is_sealed(payload) else payload
            message = decode(envelope, self.limits)
        except MessageError as exc:
            return GateVerdict(False, exc.reason, detail=exc.detail)
        kind = _KIND_OF[type(message)]
        if expected_kind is not None and kind != expected_kind:
            return GateVerdict(False, "wrong_kind", detail=f"{kind} where {expected_kind} was expected")
        if self.pinned and kind in self.signed_kinds and not is_sealed(payload):
            return GateVerdict(False, "unsigned", detail=f"{kind} without a server signature")
        if message.sender != self.server_id:
            return GateVerdict(False, "wrong_sender", detail=f"from {message.sender[:64]!r}")
        return self._order(kind, message) if self.pinned else GateVerdict(True, message=message)

    def _order(self, kind: str, message: Message) -> GateVerdict:
        if not isinstance(message, (Knowledge, ProxySet, Weights, ProxyManifest)):
            # status, acks and proxy chunks carry no order to keep (a chunk's content is its identity)
            return GateVerdict(True, message=message)
        if message.epoch < self.epoch:
            return GateVerdict(False, "version_regressed",
                               detail=f"{kind} of epoch {message.epoch} after epoch {self.epoch}")
        if not isinstance(message, (ProxySet, ProxyManifest)):
            mark = (message.epoch, message.version if isinstance(message, Knowledge) else message.base_version)
            high = self.highs.get(kind, (0, 0))
            if mark < high:
                return GateVerdict(False, "version_regressed",
                                   detail=f"{kind} (epoch, version) {mark} after {high}")
            self.highs[kind] = mark
        self.epoch = message.epoch
        return GateVerdict(True, message=message)

    def to_state(self) -> dict[str, object]:
        return {"epoch": self.epoch, "highs": {k: list(v) for k, v in self.highs.items()}}

    def restore(self, state: dict[str, object]) -> None:
        """Take the marks of :meth:`to_state` (the client's own file)."""
        epoch = state.get("epoch", 0)
        highs = state.get("highs", {})
        if isinstance(epoch, int) and isinstance(highs, dict):
            self.epoch = max(self.epoch, epoch)
            for kind, (e, v) in highs.items():
                self.highs[str(kind)] = max(self.highs.get(str(kind), (0, 0)), (int(e), int(v)))
