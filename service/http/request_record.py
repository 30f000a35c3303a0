"""The record of each HTTP request, owned here from its first byte to its last.

`RequestObserver` (ASGI, outside Quart, so it sees the whole exchange) starts the request's
context (`context.py`), counts it in the metrics, echoes the request id on every response (500s
included) and writes the one canonical `request_finished` line once the body has been sent.
Inside Quart, `bind_route_of` adds the route template (the app binds the signed-in user, once
sign-in has settled who it is); an unhandled exception is logged once, by `log_request_failure`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable
from logging import ERROR, WARNING
from types import TracebackType
from typing import Any, Protocol

import structlog
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPScope,
    Scope,
)
from quart.globals import request_ctx
from quart.wrappers import Request
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Rule

from service.http.proxy_fix import client_address
from service.observability.context import (
    REQUEST_ID_HEADER,
    RequestContext,
    accept_request_id,
    bind_route,
    is_probe,
    start_request,
)
from service.observability.metrics import UNMATCHED, Metrics, method_label
from service.observability.redaction import redact_url
from service.observability.trace_context import TRACEPARENT_HEADER, accept_traceparent
from service.settings import Settings

REQUEST_LOGGER = "service.request"
CLIENT_CLOSED_REQUEST = 499
ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]

_REQUEST_ID_HEADER = REQUEST_ID_HEADER.lower().encode()
_TRACEPARENT_HEADER = TRACEPARENT_HEADER.encode()
_FALLBACK_BODY = b'{"error": {"code": "internal_error", "message": "An internal error occurred."}}'
_logger = structlog.get_logger(REQUEST_LOGGER)


class StopRecord(Protocol):
    """What the request record needs of the worker's lifecycle (service/serving/lifecycle.py)."""

    # The requests (hypercorn's task of each) whose connection a stop closed mid-answer.
    abandoned: set[asyncio.Task[Any]]


class RequestObserver:
    def __init__(
        self, app: ASGIFramework, settings: Settings, metrics: Metrics, lifecycle: StopRecord
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.lifecycle = lifecycle
        # Bound once (create_app configures logging first): a module-level structlog logger is a
        # lazy proxy that looks its configuration up again on every call.
        self.logger = structlog.get_logger(REQUEST_LOGGER).bind()

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context, has_body = self._start(scope)
        is_poll = is_probe(scope["path"])
        track = self.settings.metrics_track_probes or not is_poll
        method = method_label(scope["method"])
        added = [(_REQUEST_ID_HEADER, context.request_id.encode())]
        if context.trace is not None:
            added.append((_TRACEPARENT_HEADER, context.trace.traceparent().encode()))
        status = 500
        sent_bytes = 0
        response_started = False
        started_at = time.perf_counter()
        if track:
            self.metrics.request_started(method)
        # The time spent waiting for the client to send its body is the client's, not the
        # service's: timed apart, and taken out of the request's duration in the metrics.
        body_wait = 0.0
        if has_body:
            receiving = True
            client_receive = receive

            async def receive() -> Any:
                nonlocal body_wait, receiving
                if not receiving:
                    return await client_receive()
                asked = time.perf_counter()
                message = await client_receive()
                body_wait += time.perf_counter() - asked
                if message["type"] != "http.request" or not message.get("more_body", False):
                    receiving = False  # the body is in (or the client left): later waits are not
                return message

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
                if type(headers) is list:  # a list made for this message (Quart's): extend
                    headers.extend(added)
                else:
                    message = {**message, "headers": [*(headers or ()), *added]}
            return send(message)

        try:
            await self.app(scope, receive, observed_send)
            if not response_started:
                # The app ended without answering: the client went away first (Quart stops
                # the handler when it disconnects). Not a server error: nginx's 499.
                status = CLIENT_CLOSED_REQUEST
                context.error_code = "client_closed_request"
        except Exception:
            # Quart answers its own failures (log_request_failure); this is one that escaped it.
            log_request_failure(sys.exc_info())
            context.error_code = "internal_error"
            if not response_started:
                await _send_fallback_500(observed_send)
        finally:
            elapsed = time.perf_counter() - started_at
            body_wait = min(body_wait, elapsed)
            if track:
                self.metrics.request_finished(
                    method,
                    context.route or UNMATCHED,
                    status,
                    elapsed - body_wait,
                    context.request_id,
                    context.trace_id,
                )
                if has_body:
                    self.metrics.body_waited(context.route or UNMATCHED, body_wait)
            # Abandoned at a stop: the answer (or its end) was handed over but never taken.
            abandoned = self.lifecycle.abandoned
            delivered = not abandoned or asyncio.current_task() not in abandoned
            if self.settings.log_health_requests or not is_poll:
                self._log_finished(
                    context,
                    status,
                    elapsed,
                    sent_bytes,
                    delivered,
                    body_wait if has_body else None,
                )

    def _start(self, scope: HTTPScope) -> tuple[RequestContext, bool]:
        """The request's context, and whether a body comes, from the one pass over its headers
        this module makes."""
        incoming_id = traceparent = None
        has_cookies = has_body = False
        for name, value in scope["headers"]:
            if name == _REQUEST_ID_HEADER:
                incoming_id = value.decode("latin-1")
            elif name == b"cookie":
                has_cookies = True
            elif (name == b"content-length" and value != b"0") or name == b"transfer-encoding":
                has_body = True
            elif name == _TRACEPARENT_HEADER:
                # Sent twice, it is ambiguous: ignored like a malformed one.
                traceparent = value.decode("latin-1") if traceparent is None else ""
        # Every log line carries the path unredacted (see logging.configure_logging): the client
        # chooses it, so credentials in it are masked here, once.
        context = start_request(
            accept_request_id(incoming_id),
            scope["method"],
            redact_url(scope["path"]),
            client_address(scope),
            has_cookies=has_cookies,
            trace=accept_traceparent(traceparent),
        )
        return context, has_body

    def _log_finished(
        self,
        context: RequestContext,
        status: int,
        elapsed: float,
        sent_bytes: int,
        delivered: bool,
        body_wait: float | None,
    ) -> None:
        # Whole microseconds: round(x, 3) formats the float as text internally.
        duration_ms = int(elapsed * 1_000_000) / 1000
        # Only a request with a body has a wait for it: the other lines stay as they were.
        waited = {} if body_wait is None else {"body_wait_ms": int(body_wait * 1_000_000) / 1000}
        if status < 400 and delivered:
            self.logger.info(
                "request_finished",
                status=status,
                duration_ms=duration_ms,
                **waited,
                response_bytes=sent_bytes,
                route=context.route,
                user_id=context.user_id,
            )
            return
        # Not delivered (abandoned at a stop): a warning whatever the status said.
        self.logger.log(
            ERROR if status >= 500 else WARNING,
            "request_finished",
            status=status,
            error_code=context.error_code,
            **({} if delivered else {"delivered": False}),
            duration_ms=duration_ms,
            **waited,
            response_bytes=sent_bytes,
            route=context.route,
            user_id=context.user_id,
        )


def bind_route_of(request: Request) -> None:
    """Add the route template to the request's context (called by the app before the route
    runs: only routing knows it)."""
    rule: Rule | None = request.url_rule
    if rule is None and isinstance(request.routing_exception, MethodNotAllowed):
        rule = _rule_for_another_method(request.routing_exception)
    if rule is not None:
        bind_route(rule.rule)


def _rule_for_another_method(refused: MethodNotAllowed) -> Rule | None:
    """The route a 405 was for (`PUT /` is a request for `/`, not an unknown path): werkzeug
    refuses the method without naming the rule, so the path is matched again with an allowed
    one. Only 405s pay for it."""
    adapter = request_ctx.url_adapter
    if adapter is None or not refused.valid_methods:
        return None
    try:
        rule, _ = adapter.match(method=next(iter(refused.valid_methods)), return_rule=True)
    except HTTPException:
        return None
    return rule


def log_request_failure(exc_info: ExcInfo) -> None:
    """The one server-side record of an exception a route raised; the client only sees a 500."""
    _logger.error("request_failed", exc_info=exc_info)


async def _send_fallback_500(send: ASGISendCallable) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(_FALLBACK_BODY)),
    ]
    await send(
        {"type": "http.response.start", "status": 500, "headers": headers, "trailers": False}
    )
    await send({"type": "http.response.body", "body": _FALLBACK_BODY, "more_body": False})
