"""Stopping tasks for good: cancellation that a task swallowed is delivered again.

Lives beside the transport because the transport is where the swallowing was found (see
``_bounded`` in :mod:`koala_async.io.transport`); the nodes stop their own tasks with it too.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


async def stop_tasks(tasks: list[asyncio.Task[None]], *, grace: float = 10.0, what: str = "tasks") -> None:
    """Cancel ``tasks`` and wait until they are done, cancelling again any that carry on.

    A task can swallow a ``cancel()`` (Python 3.11's ``asyncio.wait_for``, see
    ``koala_async.io.transport._bounded``, is one way), and a TaskGroup then waits for it forever.
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
