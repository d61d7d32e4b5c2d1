"""A client's updates on their way to the server: sign, persist, publish, and keep until the verdict.

A broker's PUBACK is not delivery: Mosquitto's default ``max_queued_messages 1000`` drops QoS 1
messages queued for a subscriber that falls behind, without telling anyone. So an update stays
pending until the server's verdict comes back on the client's ack topic (:meth:`Outbox.on_ack`), and
an update with no verdict after ``ack_timeout`` seconds is published again, same sequence number
(:meth:`Outbox.run`; the server answers a copy it already took as accepted). A newer update
supersedes the pending one and names it, so the server counts it too. The decisions are the pure
:class:`~koala_async.core.delivery.DeliveryLedger`; this module does the publishing and the disk.

Updates are published with an MQTT 5 message expiry of ``ack_timeout`` seconds: a broker drops a copy
that waited that long, by which time the client has republished it or moved on (a 3.1.1 link
carries no expiry).

The encoded update is written to the client's state directory (when it has one) *before* it is
published and removed once its verdict came, so a board that loses power in between publishes the
same update when it comes back, unless it has gone stale meanwhile (:meth:`Outbox.resume`).

With ``await_verdicts`` off (for servers that send no verdicts, ``acks = false``) the broker's
PUBACK ends an update's journey, as before; verdicts that do come are still counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter, deque
from collections.abc import Callable

from koala_async.core.delivery import DeliveryLedger
from koala_async.core.envelope import Ack, Limits, Message, Update, decode, encode
from koala_async.core.signing import sign, unwrap
from koala_async.errors import MessageError
from koala_async.io.base import Transport
from koala_async.nodes.client_state import ClientState
from koala_async.nodes.events import EventHub, UpdateAccepted, UpdatePublished, UpdateRejected

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, node_id: str, topic: str, events: EventHub, store: ClientState | None,
                 signing_key: str | None, ack_timeout: float = 30.0, await_verdicts: bool = True) -> None:
        self.node_id = node_id
        self.topic = topic  # the client's update topic
        self.events = events
        self.store = store
        self.signing_key = signing_key.encode() if signing_key else None
        self.ack_timeout = ack_timeout
        self.await_verdicts = await_verdicts
        self.ledger = DeliveryLedger(ack_timeout)
        self.bytes_up = 0
        self._published: deque[int] = deque(maxlen=1024)  # await_verdicts off: seqs whose verdict may come
        self._changed = asyncio.Event()  # a new pending update: the retry loop re-reads its deadline
        self._judged = asyncio.Event()  # set whenever a verdict clears the pending update

    # -- counts (see core/delivery.py for what each means) --------------------------------------

    @property
    def sent(self) -> int:
        return self.ledger.sent

    @property
    def accepted(self) -> int:
        return self.ledger.accepted

    @property
    def rejected(self) -> Counter[str]:
        return self.ledger.rejected

    @property
    def superseded(self) -> int:
        return self.ledger.superseded

    @property
    def pending(self) -> int:
        return int(self.ledger.pending is not None)

    # -- publishing ----------------------------------------------------------------------------

    async def send(self, transport: Transport, message: Message, tier: str, payload: bytes | None = None) -> None:
        """Publish ``message`` (QoS 1; made durable first when the client has a state directory); it
        supersedes the update still awaiting its verdict, if any."""
        carried = self.ledger.supersede() if self.await_verdicts else ()
        if payload is None:
            if carried and isinstance(message, Update):
                message = dataclasses.replace(message, supersedes=carried)
            payload = encode(message)
            if self.signing_key:
                payload = sign(payload, self.signing_key)
            if self.store is not None:
                self.store.save_pending(payload, message.seq)
        # recorded before publishing: the verdict may beat the PUBACK
        if self.await_verdicts:
            self.ledger.published(message.seq, payload, time.monotonic())
            self._changed.set()
        else:
            self._published.append(message.seq)
            self.ledger.sent += 1
        await transport.publish(self.topic, payload, qos=1, expiry=self.ack_timeout)
        if self.store is not None and not self.await_verdicts:
            self.store.clear_pending()  # PUBACK received: the broker holds it now
        self.bytes_up += len(payload)
        self.events.emit(UpdatePublished(self.node_id, message.seq, getattr(message, "base_version", 0), tier,
                                         getattr(message, "n_samples", 0), len(payload)))

    async def run(self, transport: Transport) -> None:
        """Republish the pending update each time its verdict is overdue (a task of the client's
        TaskGroup, for as long as the client runs)."""
        while True:
            deadline = self.ledger.next_deadline()
            self._changed.clear()
            try:
                async with asyncio.timeout(None if deadline is None else max(0.0, deadline - time.monotonic())):
                    await self._changed.wait()
                continue  # a new update: its deadline is the one to wait for
            except TimeoutError:
                pass
            overdue = self.ledger.due(time.monotonic())
            if overdue is None:
                continue
            log.info("%s: no verdict on update %d after %d publication(s); publishing it again", self.node_id,
                     overdue.seq, overdue.attempts - 1)
            await transport.publish(self.topic, overdue.payload, qos=1, expiry=self.ack_timeout)
            self.bytes_up += len(overdue.payload)

    async def resume(self, transport: Transport, limits: Limits, still_valid: Callable[[Message], str],
                     knowledge_known: Callable[[], bool], tier: str) -> bool:
        """Publish an update a crash left without its verdict, unless it has gone stale meanwhile;
        True when one was published."""
        payload = self.store.pending() if self.store is not None else None
        if payload is None or self.store is None:
            return False
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
            return False
        log.info("%s: publishing the pending update left by a crash", self.node_id)
        await self.send(transport, message, tier, payload)
        return True

    async def settled(self, timeout: float) -> bool:
        """Wait until the pending update (if any) has its verdict, for at most ``timeout`` seconds
        (republications included); True when nothing is pending."""
        try:
            async with asyncio.timeout(timeout):
                while self.await_verdicts and self.ledger.pending is not None:
                    self._judged.clear()
                    await self._judged.wait()
        except TimeoutError:
            return False
        return True

    # -- verdicts ------------------------------------------------------------------------------

    def on_ack(self, ack: Ack) -> str | None:
        """Take the server's verdict on one of our updates; returns why it is refused (None if taken).

        An update the server had already judged is answered again (a republished copy, or a number we
        superseded): such a repeat changes nothing and is not refused."""
        if ack.client != self.node_id:
            return "unknown_ack"
        if not self.await_verdicts:
            if ack.update_seq not in self._published:
                return "unknown_ack"
            self._published.remove(ack.update_seq)
            self.ledger.settle(ack.update_seq, ack.accepted, ack.reason)
            outcome = "accepted" if ack.accepted else "rejected"
        else:
            was_pending = self.ledger.pending is not None and self.ledger.pending.seq == ack.update_seq
            outcome = self.ledger.verdict(ack.update_seq, ack.accepted, ack.reason)
            if outcome == "unknown":
                return "unknown_ack"
            if was_pending:
                self._judged.set()
                if self.store is not None:
                    self.store.clear_pending()  # the server has judged it: nothing left to republish
        if outcome in ("accepted", "rejected", "converted"):
            if ack.accepted:
                self.events.emit(UpdateAccepted(self.node_id, self.node_id, ack.update_seq, ack.version,
                                                ack.staleness))
            else:
                self.events.emit(UpdateRejected(self.node_id, self.node_id, ack.update_seq, ack.version,
                                                ack.reason))
        return None

    def snapshot(self) -> dict[str, object]:
        return {**self.ledger.snapshot(), "bytes_up": self.bytes_up}
