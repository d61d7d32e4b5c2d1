"""Cancellation that is never lost: bounded waits for aiomqtt, and stopping tasks for good.

:func:`bounded` is how the transport waits for a broker's acknowledgement without losing a
``cancel()``; :func:`stop_tasks` stops tasks that swallowed one anyway (the nodes use it too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import aiomqtt

log = logging.getLogger(__name__)


async def bounded(call: Awaitable[object], seconds: float, what: str,
                  inflight: set[asyncio.Timeout] | None = None) -> None:
    """Await an aiomqtt call made with ``timeout=math.inf``, bounded here by ``asyncio.timeout``.

    Workaround for a lost cancellation: aiomqtt 2.5 waits for a PUBACK/SUBACK with
    ``asyncio.wait_for(event.wait(), timeout)``, and on Python 3.11 ``wait_for`` *swallows* a
    ``cancel()`` that arrives in the same event-loop iteration as the acknowledgement (it returns the
    result instead of raising ``CancelledError``). The cancelled task then carries on: the server's
    ack sender went back to ``queue.get()`` for good, its TaskGroup waited for it forever and
    ``ServerNode`` shutdown hung (seen in the ingest benchmark, which stops the server while acks are
    still being published). With ``timeout=math.inf`` aiomqtt awaits the event directly, which
    propagates cancellation; ``asyncio.timeout`` (unlike 3.11's ``wait_for``) does not lose it.

    The deadline is kept in ``inflight`` while the call waits: aiomqtt never fails a pending publish
    when its link drops, so the transport expires these deadlines itself then (see ``Transport._expire_inflight``)
    and the publish is retried on the next connection at once instead of after ``seconds``.
    """
    try:
        async with asyncio.timeout(seconds) as deadline:
            if inflight is not None:
                inflight.add(deadline)
            try:
                await call
            finally:
                if inflight is not None:
                    inflight.discard(deadline)
    except TimeoutError:
        raise aiomqtt.MqttError(f"{what}: no acknowledgement (timed out, or the link dropped)") from None


async def stop_tasks(tasks: list[asyncio.Task[None]], *, grace: float = 10.0, what: str = "tasks") -> None:
    """Cancel ``tasks`` and wait until they are done, cancelling again any that carry on.

    A task can swallow a ``cancel()`` (Python 3.11's ``asyncio.wait_for``, see
    :func:`bounded`, is one way), and a TaskGroup then waits for it forever.
    Re-cancelling every half second makes such a task stop at its next await. Gives up after ``grace`` seconds (logged) rather than wait forever.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    pending = {t for t in tasks if not t.done()}
    rounds = 0
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
        rounds += 1
        if pending and rounds == 1:
            log.warning("%s still running after cancel(): %s; cancelling again", what,
                        ", ".join(sorted(t.get_name() for t in pending)))
        if pending and loop.time() > deadline:
            log.error("%s did not stop within %.0fs: %s", what, grace,
                      ", ".join(sorted(t.get_name() for t in pending)))
            return
