"""asyncio's own error reports, fit for a log: a burst of failed accepts is a line per interval.

When a worker runs out of file descriptors (or memory for a socket), asyncio reports every
failed `accept()` with a traceback, and retries a second later: thousands of identical
tracebacks while slow clients hold the descriptors. Here they become one `accept_failed` line
per `ACCEPT_LOG_INTERVAL` seconds, with how many failed since the last line; every other report
goes to the handler that was there before.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from typing import Any

import structlog

logger = structlog.get_logger(__name__)

ACCEPT_LOG_INTERVAL = 10.0
_ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's selector_events


class AcceptFailures:
    """A loop exception handler in front of `previous` (None: asyncio's default)."""

    def __init__(self, previous: _Handler | None) -> None:
        self._previous = previous
        self._count = 0
        self._next_line_at = 0.0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") != _ACCEPT_FAILED or not isinstance(exc, OSError):
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self._count += 1
        if loop.time() >= self._next_line_at:
            logger.error(
                "accept_failed",
                reason=errno.errorcode.get(exc.errno or 0, "other"),
                failures=self._count,
                retry_seconds=1,
            )
            self._count = 0
            self._next_line_at = loop.time() + ACCEPT_LOG_INTERVAL


def quiet_accept_failures(loop: asyncio.AbstractEventLoop) -> None:
    loop.set_exception_handler(AcceptFailures(loop.get_exception_handler()))


_Handler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]
