"""The ASGI middleware that observes every HTTP request.

It runs outside Quart, so it sees the whole exchange: it binds the request context, echoes the
request id on every response (500s included), and writes the one canonical `request_finished`
line once the body has been fully sent.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from logging import ERROR, INFO, WARNING
from typing import Any

import structlog
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from service.observability.context import (
    REQUEST_ID_HEADER,
    accept_request_id,
    client_ip,
    is_probe,
    start_request,
)
from service.observability.logging import redact_url
from service.observability.metrics import UNMATCHED, Metrics, method_label
from service.settings import Settings

_REQUEST_ID_HEADER = REQUEST_ID_HEADER.lower().encode()
_FALLBACK_BODY = b'{"error": {"code": "internal_error", "message": "An internal error occurred."}}'


class RequestObserver:
    def __init__(self, app: ASGIFramework, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        # Bound once (create_app configures logging first): a module-level structlog logger is a
        # lazy proxy that looks its configuration up again on every call.
        self.logger = structlog.get_logger("service.request").bind()

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming_id = forwarded_for = None
        has_cookies = False
        for name, value in scope["headers"]:
            if name == _REQUEST_ID_HEADER:
                incoming_id = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                forwarded_for = value.decode("latin-1")
            elif name == b"cookie":
                has_cookies = True
        request_id = accept_request_id(incoming_id)
        peer = scope.get("client")
        client = client_ip(peer[0] if peer else None, forwarded_for, self.settings.trusted_proxies)
        path: str = scope["path"]
        is_poll = is_probe(path)
        track = self.settings.metrics_track_probes or not is_poll
        method = method_label(scope["method"])
        # Every log line carries the path unredacted (see logging.configure_logging): the client
        # chooses it, so credentials in it are masked here, once.
        context = start_request(
            request_id, scope["method"], redact_url(path), client, has_cookies=has_cookies
        )
        id_header = (_REQUEST_ID_HEADER, request_id.encode())
        status = 500
        sent_bytes = 0
        response_started = False
        started_at = time.perf_counter()
        if track:
            self.metrics.request_started(method)

        # A plain function handing back `send`'s awaitable: no coroutine of its own per message.
        def observed_send(message: Any) -> Awaitable[None]:
            nonlocal status, sent_bytes, response_started
            kind = message["type"]
            if kind == "http.response.body":
                sent_bytes += len(message.get("body", b""))
            elif kind == "http.response.start":
                response_started = True
                status = message["status"]
                headers = message.get("headers")
                if type(headers) is list:  # a list made for this message (Quart's): append
                    headers.append(id_header)
                else:
                    message = {**message, "headers": [*(headers or ()), id_header]}
            return send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception:
            self.logger.exception("request_failed")
            if not response_started:
                await _send_fallback_500(observed_send)
        finally:
            elapsed = time.perf_counter() - started_at
            if track:
                self.metrics.request_finished(method, context.route or UNMATCHED, status, elapsed)
            if self.settings.log_health_requests or not is_poll:
                # Whole microseconds: round(x, 3) formats the float as text internally.
                duration_ms = int(elapsed * 1_000_000) / 1000
                level = ERROR if status >= 500 else WARNING if status >= 400 else INFO
                self.logger.log(
                    level,
                    "request_finished",
                    status=status,
                    duration_ms=duration_ms,
                    response_bytes=sent_bytes,
                    route=context.route,
                    user_id=context.user_id,
                )


async def _send_fallback_500(send: ASGISendCallable) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(_FALLBACK_BODY)),
    ]
    await send(
        {"type": "http.response.start", "status": 500, "headers": headers, "trailers": False}
    )
    await send({"type": "http.response.body", "body": _FALLBACK_BODY, "more_body": False})
