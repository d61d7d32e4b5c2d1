"""The server's verdicts, sent back: one :class:`~koala_async.core.envelope.Ack` per decoded update on
``koala/<fed>/clients/<id>/ack`` (QoS 1, not retained), so a client learns whether each update was
accepted and, if not, why.

Admission must never wait on the network, so verdicts go through a bounded queue that a task of the
server's TaskGroup drains, up to ``window`` publishes in flight at once (one PUBACK round trip per
verdict would otherwise cap verdicts at about 1,000/s here, below the server's ingest rate); when the
queue is full the new verdict is dropped and counted (``AckSender.dropped``). A client that is offline
when its ack is sent does not get it (clean session): it republishes the update after its
``ack_timeout`` and the server answers the copy (core/verdicts.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from koala_async.core.envelope import Ack, encode
from koala_async.core.topics import Topics
from koala_async.io.base import Transport
from koala_async.nodes.common import SeqCounter

log = logging.getLogger(__name__)


class AckSender:
    def __init__(self, topics: Topics, node_id: str, seq: SeqCounter, maxsize: int = 10_000,
                 window: int = 32, flush: Callable[[], None] | None = None) -> None:
        self.topics = topics
        self.flush = flush  # makes the journal durable: a verdict never goes out before its record is
        self.node_id = node_id
        self._seq = seq
        self._queue: asyncio.Queue[Ack] = asyncio.Queue(maxsize)
        self.window = window
        self.sent = 0
        self.dropped = 0

    def offer(self, client: str, update_seq: int, accepted: bool, reason: str, version: int,
              staleness: int = 0) -> None:
        """Queue a verdict for ``client``; never blocks (drops and counts when the queue is full)."""
        ack = Ack(sender=self.node_id, seq=self._seq.next(), client=client, update_seq=update_seq,
                  accepted=accepted, reason=reason, version=version, staleness=staleness, sent_at=time.time())
        try:
            self._queue.put_nowait(ack)
        except asyncio.QueueFull:
            if self.dropped == 0:
                log.warning("ack queue full: dropping verdicts (counted as acks_dropped)")
            self.dropped += 1

    async def run(self, transport: Transport) -> None:
        """Publish queued verdicts for as long as the server runs (a task of its TaskGroup), at most
        ``window`` at once."""
        slots = asyncio.Semaphore(self.window)

        async def send(ack: Ack) -> None:
            try:
                await transport.publish(self.topics.ack(ack.client), encode(ack), qos=1)
                self.sent += 1
            finally:
                slots.release()

        async with asyncio.TaskGroup() as in_flight:
            while True:
                ack = await self._queue.get()
                if self.flush is not None:
                    self.flush()  # a no-op unless arrivals were journaled since the last fsync
                await slots.acquire()
                in_flight.create_task(send(ack))
