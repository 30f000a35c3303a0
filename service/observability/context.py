"""The request context: request id, method, path, client, route and user, in one ContextVar.

The request observer (`service/http/request_record.py`) starts a `RequestContext` for each request.
Quart runs the handler in a child task, which inherits the context: `bind_route` and `bind_user`
there change the one shared object, so every later log line of the request, the observer's last
one included, carries them.
`add_request_context` is the processor that puts the fields on each log line. One ContextVar
holding one object keeps that O(1): structlog's `merge_contextvars` walks every variable of the
context on every line, and binding a key there costs a ContextVar per key.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from structlog.types import EventDict, WrappedLogger

from service.observability.trace_context import TraceContext
from service.unavailable import Dependency

REQUEST_ID_HEADER = "X-Request-ID"
# The paths pollers hit (Prometheus, load balancers): served by their blueprints under these
# prefixes, and kept out of the request metrics and log unless asked (METRICS_TRACK_PROBES,
# LOG_HEALTH_REQUESTS).
METRICS_PATH = "/metrics"
HEALTH_PATH = "/api/health"


# What a request can be waiting on when its deadline passes: a backing service; the client,
# still sending the body it declared (the client's delay: 408); or this worker's password-hashing
# pool, busy with other hashes (its own capacity: 503, counted against no dependency).
WaitingOn = Dependency | Literal["client", "password_hashing"]


def is_probe(path: str) -> bool:
    return path == METRICS_PATH or path.startswith(HEALTH_PATH)


_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,128}")


@dataclass(slots=True)
class RequestContext:
    request_id: str
    method: str
    path: str
    client_ip: str
    route: str | None = None
    user_id: int | None = None
    error_code: str | None = None  # the API error answered, on the request_finished line only
    # What the request is waiting on right now: a request that outlives its deadline waiting on
    # a backing service is counted against it (`dependency_errors_total{reason="timeout"}`).
    waiting_on: WaitingOn | None = None
    trace: TraceContext | None = None  # from a valid incoming `traceparent`
    # Not logged: lets the session check (`sessions.settle_session_cookie`) skip cookie
    # parsing (and the session lookup) when the request carries no cookie at all, as most API
    # and probe requests do.
    has_cookies: bool = False

    @property
    def trace_id(self) -> str | None:
        return self.trace.trace_id if self.trace is not None else None


_current: ContextVar[RequestContext | None] = ContextVar("request_context", default=None)


def start_request(
    request_id: str,
    method: str,
    path: str,
    client: str,
    *,
    has_cookies: bool = False,
    trace: TraceContext | None = None,
) -> RequestContext:
    """Make this request's context the current one (replacing whatever the task inherited)."""
    context = RequestContext(request_id, method, path, client, has_cookies=has_cookies, trace=trace)
    _current.set(context)
    return context


def current_context() -> RequestContext | None:
    return _current.get()


def bind_route(route: str) -> None:
    context = _current.get()
    if context is not None:
        context.route = route


def bind_user(user_id: int) -> None:
    context = _current.get()
    if context is not None:
        context.user_id = user_id


def bind_error(code: str) -> None:
    context = _current.get()
    if context is not None:
        context.error_code = code


@contextmanager
def waiting_on(dependency: WaitingOn) -> Iterator[None]:
    """Mark the current request as waiting on `dependency` for the block."""
    context = _current.get()
    if context is None:
        yield
        return
    previous, context.waiting_on = context.waiting_on, dependency
    try:
        yield
    except asyncio.CancelledError:
        raise  # the mark stays: the deadline's handler reads what was being waited on
    except BaseException:
        context.waiting_on = previous
        raise
    context.waiting_on = previous


def add_request_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Processor: the current request's fields; a key the event sets itself wins."""
    context = _current.get()
    if context is None:
        return event_dict
    event_dict.setdefault("request_id", context.request_id)
    event_dict.setdefault("method", context.method)
    event_dict.setdefault("path", context.path)
    event_dict.setdefault("client_ip", context.client_ip)
    if context.route is not None:
        event_dict.setdefault("route", context.route)
    if context.user_id is not None:
        event_dict.setdefault("user_id", context.user_id)
    if context.trace is not None:
        event_dict.setdefault("trace_id", context.trace.trace_id)
        event_dict.setdefault("span_id", context.trace.span_id)
    return event_dict


def current_request_id() -> str | None:
    context = _current.get()
    return context.request_id if context is not None else None


def accept_request_id(incoming: str | None) -> str:
    """Keep a caller's id when it is safe to log and echo, otherwise make a new one."""
    if incoming is not None and _SAFE_REQUEST_ID.fullmatch(incoming):
        return incoming
    # 128 random bits as 32 hex digits, like uuid4().hex, without uuid4's urandom system call on
    # every request (a request id needs to be unique, not unguessable) and without a format spec
    # (a third of the cost).
    return random.getrandbits(128).to_bytes(16).hex()
