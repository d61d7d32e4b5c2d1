"""A client's updates on their way to the server: sign, persist, publish, and match the verdicts.

The encoded update is written to the client's state directory (when it has one) *before* it is
published and removed once the broker holds it, so a board that loses power in between publishes the
same update (same sequence number: the server's dedupe makes a double delivery harmless) when it comes
back, unless it has gone stale meanwhile (:meth:`Outbox.resume`). Each update the server judges comes
back on the client's ack topic (:meth:`Outbox.on_ack`) and is counted as accepted or rejected by reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable

from koala_async.core.envelope import Ack, Limits, Message, decode, encode
from koala_async.core.signing import sign, unwrap
from koala_async.errors import MessageError
from koala_async.io.base import Transport
from koala_async.nodes.client_state import ClientState
from koala_async.nodes.events import EventHub, UpdateAccepted, UpdatePublished, UpdateRejected

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, node_id: str, topic: str, events: EventHub, store: ClientState | None,
                 signing_key: str | None) -> None:
        self.node_id = node_id
        self.topic = topic  # the client's update topic
        self.events = events
        self.store = store
        self.signing_key = signing_key.encode() if signing_key else None
        self.sent = 0
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.bytes_up = 0
        self._awaiting: deque[int] = deque(maxlen=1024)  # seqs published: the verdicts we expect

    async def send(self, transport: Transport, message: Message, tier: str, payload: bytes | None = None) -> None:
        """Publish ``message`` (QoS 1; made durable first when the client has a state directory)."""
        if payload is None:
            payload = encode(message)
            if self.signing_key:
                payload = sign(payload, self.signing_key)
            if self.store is not None:
                self.store.save_pending(payload, message.seq)
        self._awaiting.append(message.seq)  # before publishing: the ack may beat the PUBACK
        await transport.publish(self.topic, payload, qos=1)
        if self.store is not None:
            self.store.clear_pending()  # PUBACK received: the broker holds it now
        self.sent += 1
        self.bytes_up += len(payload)
        self.events.emit(UpdatePublished(self.node_id, message.seq, getattr(message, "base_version", 0), tier,
                                         getattr(message, "n_samples", 0), len(payload)))

    async def resume(self, transport: Transport, limits: Limits, still_valid: Callable[[Message], str],
                     knowledge_known: Callable[[], bool], tier: str) -> None:
        """Publish an update a crash left unacknowledged, unless it has gone stale meanwhile."""
        payload = self.store.pending() if self.store is not None else None
        if payload is None or self.store is None:
            return
        if not knowledge_known():  # retained knowledge normally arrives with the proxy set
            await asyncio.sleep(1.0)
        try:
            message = decode(unwrap(payload)[0], limits)
            reason = still_valid(message)
        except MessageError as exc:
            reason = f"unreadable ({exc.reason})"
        if reason:
            log.warning("%s: discarding the pending update left by a crash: %s", self.node_id, reason)
            self.store.clear_pending()
            return
        log.info("%s: publishing the pending update left by a crash", self.node_id)
        await self.send(transport, message, tier, payload)

    def on_ack(self, ack: Ack) -> str | None:
        """Take the server's verdict on one of our updates; returns why it is refused (None if taken)."""
        if ack.client != self.node_id or ack.update_seq not in self._awaiting:
            return "unknown_ack"
        self._awaiting.remove(ack.update_seq)
        if ack.accepted:
            self.accepted += 1
            self.events.emit(UpdateAccepted(self.node_id, self.node_id, ack.update_seq, ack.version, ack.staleness))
        else:
            self.rejected[ack.reason] += 1
            self.events.emit(UpdateRejected(self.node_id, self.node_id, ack.update_seq, ack.version, ack.reason))
        return None

