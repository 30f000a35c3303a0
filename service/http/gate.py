"""The requests of one worker as its stop sees them: which are in flight, whether the worker
drains, when it has served enough to make way for a successor.

Outermost in the app's ASGI stack (service/app.py), so that it sees every request, probes and
answers given before Quart included. The supervisor (service/serving/supervisor.py) drives it
through the app: `ServiceApp.begin_draining`, `abandon_in_flight`, `recycle_after`. Under plain
hypercorn it only counts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from service.http.connection_close import announce_close


class RequestGate:
    def __init__(self) -> None:
        self.in_flight: set[asyncio.Task[Any]] = set()  # hypercorn's task of each request
        self.draining = False
        self.served = 0
        self._recycle_at: int | None = None
        self._recycle: Callable[[], None] | None = None

    def recycle_after(self, requests: int, then: Callable[[], None]) -> None:
        """Call `then` once this many requests have arrived (hypercorn's `max_requests`)."""
        self._recycle_at, self._recycle = requests, then

    def around(self, app: ASGIFramework) -> ASGIFramework:
        """`app` behind the gate."""

        async def gated(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            self.served += 1
            if self.served == self._recycle_at and self._recycle is not None:
                self._recycle()
            task = asyncio.current_task()
            assert task is not None
            self.in_flight.add(task)
            try:
                if scope["http_version"] in ("1.0", "1.1"):
                    await app(scope, receive, self._closing_when_draining(send))
                else:
                    await app(scope, receive, send)
            finally:
                self.in_flight.discard(task)

        return gated

    def _closing_when_draining(self, send: ASGISendCallable) -> ASGISendCallable:
        # Decided when the answer starts, not when the request arrived: a request in flight
        # when draining begins must also tell its client not to reuse the connection, or the
        # client's next request meets a connection hypercorn is closing.
        def send_closing(message: Any) -> Awaitable[None]:
            return send(announce_close(message) if self.draining else message)

        return send_closing
