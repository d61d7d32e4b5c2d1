"""Blocking work (training, probing, loading) in worker threads that a node can account for.

``asyncio.to_thread`` forgets its thread once the awaiting task is cancelled: the thread runs on,
unowned. :class:`Workers` keeps every job's future, so a node's exit can tell long jobs to stop
(``stop``, a ``threading.Event`` they check) and wait until no thread of its own is still running.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Workers:
    def __init__(self) -> None:
        self.stop = threading.Event()  # set on shutdown: long jobs end early
        self.running: set[asyncio.Future[Any]] = set()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the loop's default executor. Cancelling the caller does not orphan the
        thread: it stays in ``running`` until it returns."""
        future = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))
        self.running.add(future)
        future.add_done_callback(self.running.discard)
        return await asyncio.shield(future)

    async def run_timed(self, fn: Callable[..., T], *args: Any) -> tuple[T, float]:
        """:meth:`run`, and the CPU seconds the worker thread spent on it (not its wall time: on a
        shared host, most of that can be waiting for a core)."""
        def timed() -> tuple[T, float]:
            started = time.thread_time()
            result = fn(*args)
            return result, time.thread_time() - started

        return await self.run(timed)

    async def join(self) -> None:
        """Ask running jobs to stop, then wait for every one of them to return."""
        self.stop.set()
        while self.running:
            await asyncio.wait(set(self.running))
