"""Bounded waiting for the async tests: a wedged federation fails the test instead of hanging it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> None:
    """Poll ``predicate`` until it holds, or fail the test after ``timeout`` seconds naming ``what``."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(poll)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout}s waiting for {what}")
