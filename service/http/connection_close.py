"""Answers that end their HTTP/1 connection say so (`Connection: close`).

A route can answer before the request's body has arrived (a 429 from a rate limit, a 503 while
the limits' cache is down, a 413 from the declared length). The unread rest of the body is still
on the connection, so the server cannot read the next request from it and closes it after the
answer; without `Connection: close` on that answer, a client sends its next request on a
connection the server is closing and sees it fail.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)


class CloseAfterUnreadBody:
    """ASGI middleware: `Connection: close` on an HTTP/1 answer that starts while the request's
    body is still unread (HTTP/2 streams are independent: nothing to close)."""

    def __init__(self, app: ASGIFramework) -> None:
        self.app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if (
            scope["type"] != "http"
            or scope.get("http_version") not in ("1.0", "1.1")
            or not _has_body(scope["headers"])  # most requests: nothing to wrap
        ):
            await self.app(scope, receive, send)
            return
        unread = True

        async def receive_tracked() -> ASGIReceiveEvent:
            nonlocal unread
            event = await receive()
            if event["type"] != "http.request" or not event.get("more_body", False):
                unread = False
            return event

        async def send_closing(event: ASGISendEvent) -> None:
            await send(announce_close(event) if unread else event)

        await self.app(scope, receive_tracked, send_closing)


def announce_close(message: Any) -> Any:
    """`message` with `Connection: close`, if it starts an answer (once, whoever asks)."""
    if message["type"] != "http.response.start":
        return message
    headers = [(n, v) for n, v in message.get("headers", ()) if n.lower() != b"connection"]
    return {**message, "headers": [*headers, (b"connection", b"close")]}


def _has_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            return value.strip() not in (b"0", b"")
        if lower == b"transfer-encoding":
            return True
    return False
