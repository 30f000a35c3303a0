"""One deadline per request (REQUEST_TIMEOUT), kept by one sweeper task per worker.

A request registers its task and its expiry in a dict when it starts and removes them when it
ends; a sweeper task wakes every `resolution` seconds and cancels the requests past their expiry.
That is a dict write and a dict removal per request, where `asyncio.timeout` around each request
scheduled and cancelled a timer handle and ran a context manager (3.6 µs of CPU per request,
docs/benchmarks.md). The price: a deadline is kept to within `resolution` (a tenth of the timeout,
at most 50 ms) rather than to the millisecond.

The cancellation is told apart from any other (a client that went away) by the tasks the sweeper
cancelled, as `asyncio.timeout` does with its own state, with why: their deadline passed, or the
server is stopping and cannot wait for them any longer (`stop_all`).
"""

from __future__ import annotations

import asyncio
import contextvars
from contextlib import suppress
from typing import Literal

MAX_RESOLUTION = 0.05
# Why a request's work was cancelled: its REQUEST_TIMEOUT passed, or the server is stopping.
Expiry = Literal["deadline", "stop"]


class Deadlines:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.resolution = min(MAX_RESOLUTION, timeout / 10)
        self._expiries: dict[asyncio.Task[object], float] = {}
        self._expired: dict[asyncio.Task[object], Expiry] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def begin(self) -> asyncio.Task[object]:
        """Start the deadline of the running task (a request); `end` must follow."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # the first request of this event loop
            self._start_sweeper(loop)
        task = asyncio.current_task(loop)
        assert task is not None
        self._expiries[task] = loop.time() + self.timeout
        return task

    def extend(self, task: asyncio.Task[object], seconds: float) -> None:
        """Move the task's deadline `seconds` later (time the client took, not the service), unless
        it has passed already."""
        expiry = self._expiries.get(task)
        if expiry is not None:
            self._expiries[task] = expiry + seconds

    def expired(self, task: asyncio.Task[object]) -> Expiry | None:
        """Why the task was cancelled here (its deadline passed, or `stop_all`), or None."""
        return self._expired.get(task)

    def stop_all(self) -> int:
        """Cancel every request still being worked on, as its deadline would (the server stops
        and cannot wait for them): how many."""
        stopped = list(self._expiries)
        self._expiries.clear()
        for task in stopped:
            self._expired[task] = "stop"
            task.cancel()
        return len(stopped)

    def end(self, task: asyncio.Task[object]) -> None:
        """The request is over: forget its deadline, and take back the cancellation the sweeper
        sent if it did, so that the task's own later waits are not cancelled again."""
        self._expiries.pop(task, None)
        if self._expired.pop(task, None) is not None:
            task.uncancel()

    async def close(self) -> None:
        """Stop the sweeper (the app stops serving)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
            self._loop = None

    def _start_sweeper(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._expiries.clear()
        self._expired.clear()
        # Its own empty context: not a copy of the request's that happened to start it.
        self._sweeper = loop.create_task(self._sweep(loop), context=contextvars.Context())

    async def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            await asyncio.sleep(self.resolution)
            if not self._expiries:
                continue
            now = loop.time()
            overdue = [task for task, expiry in self._expiries.items() if expiry <= now]
            for task in overdue:
                del self._expiries[task]
                self._expired[task] = "deadline"
                task.cancel()
