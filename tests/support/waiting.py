"""Waiting on a condition with a deadline, never on the clock: the one way tests wait.

The deadline only tells a hang from a slow machine; a test never asserts how fast it came true.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

POLL_SECONDS = 0.05


def wait_until(condition: Callable[[], Any], seconds: float, message: str) -> None:
    """Until `condition()` is true; AssertionError(`message`) after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(POLL_SECONDS)


async def until(
    condition: Callable[[], Any | Awaitable[Any]], seconds: float, message: str
) -> None:
    """`wait_until` for a test's event loop: `condition` may be a coroutine function, and a plain
    one runs in a thread (it may block, as an HTTP call does) so the loop goes on meanwhile."""
    deadline = time.monotonic() + seconds
    while True:
        if inspect.iscoroutinefunction(condition):
            holds = await condition()
        else:
            holds = await asyncio.to_thread(condition)
        if holds:
            return
        if time.monotonic() > deadline:
            raise AssertionError(message)
        await asyncio.sleep(POLL_SECONDS)
