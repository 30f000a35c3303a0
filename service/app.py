"""The application factory: build Quart, set up each part, register the blueprints."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog
from hypercorn.typing import ASGIFramework
from quart import Quart
from quart.ctx import RequestContext
from quart.globals import request_ctx
from quart.sessions import NullSession, SessionInterface, SessionMixin
from quart.typing import ResponseReturnValue, ResponseTypes
from quart.wrappers import BaseRequestWebsocket, Response
from werkzeug.exceptions import NotFound

from service.auth import routes as auth
from service.auth.active_users import ActiveUsers, init_active_users
from service.auth.passwords import Passwords, init_passwords
from service.auth.rate_limits import init_rate_limits, rate_limited_routes
from service.auth.sessions import (
    SESSION_COOKIE_NAME,
    SessionStore,
    init_sessions,
    settle_session_cookie,
)
from service.auth.signed_in import LocalSessions, SignedInEdge, init_signed_in
from service.backends.cache import InstrumentedCache, create_cache, init_cache
from service.backends.db import Database, init_db
from service.blueprints import meta, rum
from service.blueprints import metrics as metrics_blueprint
from service.health import routes as health
from service.health.checks import HealthMonitor, init_health
from service.health.probes import ProbeEdge
from service.http.api_docs import init_api_docs
from service.http.connection_close import CloseAfterUnreadBody
from service.http.deadlines import Deadlines
from service.http.errors import (
    body_timeout,
    deadline_exceeded,
    register_error_handlers,
    shutting_down,
)
from service.http.gate import RequestGate
from service.http.proxy_fix import ProxyFix
from service.http.request_record import (
    ExcInfo,
    RequestObserver,
    bind_route_of,
    log_request_failure,
)
from service.http.wrappers import request_class
from service.observability.context import bind_user, current_context
from service.observability.logging import configure_logging
from service.observability.metrics import Metrics, init_metrics, instrument_engine
from service.observability.multiprocess import SharedMetrics, init_shared_metrics
from service.serving.lifecycle import Lifecycle, StopReason, init_lifecycle
from service.settings import Settings, load_settings
from service.unavailable import DEPENDENCIES, FailureReason

_logger = structlog.get_logger("service.request")
# Hooks, views, error handlers and session methods; a function made per request is not kept.
_ASYNC_FUNCTIONS_KEPT = 1024


class _NoCookieSession(SessionInterface):
    """Quart's signed-cookie `session` is not used (sign-in keeps its sessions server-side,
    service/auth/sessions.py); opening and saving it built a signer on every request."""

    null_session_class = NullSession
    _null = NullSession()

    async def open_session(self, app: Quart, request: BaseRequestWebsocket) -> NullSession:
        return self._null

    async def save_session(self, app: Quart, session: SessionMixin, response: object) -> None:
        pass


@dataclass(frozen=True)
class Parts:
    """Every part of the app, built once by `create_app` and handed to each part that needs it;
    kept on the app for its own methods, the supervisor's stop hooks and tests."""

    settings: Settings
    metrics: Metrics
    database: Database
    cache: InstrumentedCache
    health: HealthMonitor
    passwords: Passwords
    sessions: SessionStore
    active_users: ActiveUsers
    shared_metrics: SharedMetrics
    deadlines: Deadlines  # REQUEST_TIMEOUT, kept per request
    lifecycle: Lifecycle
    gate: RequestGate  # every request as the stop sees it
    local_sessions: LocalSessions | None  # this worker's signed-in answers (with Redis)


class ServiceApp(Quart):
    session_interface = _NoCookieSession()  # type: ignore[assignment]  # Quart names its own

    def __init__(self, import_name: str, parts: Parts) -> None:
        super().__init__(import_name)
        self.parts = parts
        self.request_class = request_class(parts.deadlines)
        self._async_functions: dict[Callable[..., Any], Callable[..., Awaitable[Any]]] = {}

    # The supervisor's hooks (service/serving/worker.py, StoppableApp).

    @property
    def requests_in_flight(self) -> int:
        return len(self.parts.gate.in_flight)

    def begin_draining(self, reason: StopReason) -> None:
        """This worker is to stop: readiness turns 503, HTTP/1 answers say `Connection: close`."""
        self.parts.gate.draining = True
        self.parts.lifecycle.begin_draining(reason, self.requests_in_flight)

    def recycle_after(self, requests: int, then: Callable[[], None]) -> None:
        """Call `then` (the supervisor starts a successor) once this many requests arrived."""
        self.parts.gate.recycle_after(requests, then)

    def stop_in_flight(self) -> int:
        """Called by the supervisor when graceful_timeout is nearly over: every request still
        being worked on is cancelled and answered 503 `shutting_down` (hypercorn would cancel it
        with an empty 500). How many."""
        return self.parts.deadlines.stop_all()

    def abandon_in_flight(self) -> int:
        """Called by the supervisor before it closes the connections still open at the end of
        graceful_timeout: the requests in flight then are answers their clients have not taken,
        and their lines say so. How many."""
        tasks = set(self.parts.gate.in_flight)
        if tasks:
            self.parts.lifecycle.abandon(tasks)
        return len(tasks)

    async def full_dispatch_request(
        self, request_context: RequestContext | None = None
    ) -> ResponseTypes:
        # One deadline for everything a request waits on (pool, connect, statement, Redis, the
        # hashing queue), instead of their own timeouts adding up. Past it the work is cancelled
        # (connections are returned or discarded by their context managers) and the client is
        # told to retry.
        deadlines = self.parts.deadlines
        task = deadlines.begin()
        try:
            return await super().full_dispatch_request(request_context)
        except asyncio.CancelledError:
            expiry = deadlines.expired(task)
            if expiry is None:
                raise
        finally:
            deadlines.end(task)
        if expiry == "stop":
            _logger.warning("request_stopped", waiting_on=_waiting_on())
            return await self.finalize_request(
                await self.handle_user_exception(shutting_down()), request_context
            )
        waited = _waiting_on()
        client = waited == "client"  # still sending its body: the client's delay, not ours
        _logger.log(
            logging.INFO if client else logging.WARNING,
            "request_deadline_exceeded",
            timeout_seconds=deadlines.timeout,
            waiting_on=waited,
        )
        if waited in DEPENDENCIES:
            self.parts.metrics.dependency_failed(waited, "timeout")
        answer = body_timeout() if client else deadline_exceeded()
        result = await self.handle_user_exception(answer)
        return await self.finalize_request(result, request_context)

    async def preprocess_request(
        self, request_context: RequestContext | None = None
    ) -> ResponseReturnValue | None:
        # Route and user are bound here rather than in a before_request hook: Quart wraps every
        # hook call in `ensure_async` (an `inspect` check per call), which cost more than the
        # binding itself on every request (docs/benchmarks.md, "Instructions per request").
        request = (request_context or request_ctx).request
        if _routed_path(request.scope).startswith("//"):
            # Werkzeug takes `//metrics` for `/metrics` (its `request.path` strips leading
            # slashes): a proxy's rule on the path would not see it. No route starts with `//`.
            request.url_rule = None
            raise NotFound()
        context = current_context()  # None with REQUEST_OBSERVABILITY off
        if context is not None:
            bind_route_of(request)
        # Sign-in's own work, whatever the request record does. `has_cookies` (read by the
        # record from the headers) lets most requests skip parsing cookies altogether. Half the
        # request's budget: a route that needs no session keeps the other half.
        if context is None or context.has_cookies:
            user_id = await settle_session_cookie(
                request, self.parts.active_users, self.parts.deadlines.timeout / 2
            )
            if user_id is not None and context is not None:
                bind_user(user_id)
        return await super().preprocess_request(request_context)

    async def make_default_options_response(self) -> Response:
        # Quart's answer, without its `Content-Type: text/html` for no body: `Allow` is the
        # answer, with `Content-Length: 0` (RFC 9110, OPTIONS).
        methods = request_ctx.url_adapter.allowed_methods()  # type: ignore[union-attr]
        response = self.response_class(b"", headers={"Allow": ", ".join(sorted(methods))})
        del response.headers["Content-Type"]
        return response

    def log_exception(self, exc_info: ExcInfo) -> None:
        log_request_failure(exc_info)

    def ensure_async(self, func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        # Quart calls this for every hook, view and session method of every request; its
        # `inspect.iscoroutinefunction` check cost more than most hooks themselves. The answer
        # for a function does not change: remembered, for the few hundred functions an app has.
        known = self._async_functions.get(func)
        if known is None:
            known = super().ensure_async(func)
            if len(self._async_functions) < _ASYNC_FUNCTIONS_KEPT:
                self._async_functions[func] = known
        return known


def _waiting_on() -> str | None:
    """What the request was waiting on when it was cancelled (observability/context.py)."""
    context = current_context()
    return context.waiting_on if context is not None else None


def _routed_path(scope: Any) -> str:
    """The path Quart routes, before werkzeug strips its leading slashes: an absolute-form target
    (`GET http://host//metrics`) by its path, the root path taken off."""
    path: str = scope["path"]
    if not path.startswith("/"):
        path = urlsplit(path).path
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def create_app(settings: Settings | None = None) -> ServiceApp:
    """The composition root: every part is built here and handed to whoever needs it; each
    `init_*` opens and closes its part with the app (serving hooks) or registers its routes."""
    settings = settings if settings is not None else load_settings()
    configure_logging(settings)
    metrics = Metrics(settings)
    cache = InstrumentedCache(
        create_cache(settings),
        metrics.cache_requests,
        metrics.cache_errors,
        failed=lambda reason: metrics.dependency_failed("cache", reason),
    )
    health_monitor = HealthMonitor(settings, metrics, cache)

    def database_failed(reason: FailureReason) -> None:
        metrics.dependency_failed("database", reason)
        health_monitor.database_failed(reason)  # a full disk makes the database check write

    database = Database(
        settings,
        instrument=lambda engine: instrument_engine(engine, metrics),
        failed=database_failed,
    )
    parts = Parts(
        settings=settings,
        metrics=metrics,
        database=database,
        cache=cache,
        health=health_monitor,
        passwords=Passwords(settings),
        sessions=SessionStore(settings, metrics, database, cache),
        active_users=ActiveUsers(settings, metrics.active_users, cache),
        shared_metrics=SharedMetrics(metrics, settings),
        deadlines=Deadlines(settings.request_timeout),
        lifecycle=Lifecycle(settings, health_monitor),
        gate=RequestGate(),
        local_sessions=LocalSessions()
        if settings.uses_redis and settings.session_local_copies
        else None,
    )
    app = ServiceApp(__name__, parts)
    # `/api//health` is no route: 404 like any other path, not werkzeug's HTML 308 to an address
    # built from the Host header.
    app.url_map.merge_slashes = False
    app.config.update(
        SECRET_KEY=settings.effective_secret_key,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
    )

    init_metrics(app, metrics)
    init_health(app, health_monitor)
    init_db(app, database)
    init_cache(app, cache)
    init_shared_metrics(app, parts.shared_metrics)
    init_active_users(parts.active_users, metrics)
    app.after_serving(parts.deadlines.close)
    init_rate_limits(app, settings, cache)
    init_passwords(app, parts.passwords)
    init_sessions(app, parts.sessions, settings, metrics)
    if parts.local_sessions is not None:
        init_signed_in(app, parts.local_sessions, settings)
    init_api_docs(app, settings)
    register_error_handlers(app)

    app.register_blueprint(meta.create_blueprint(settings))
    app.register_blueprint(
        metrics_blueprint.create_blueprint(settings, metrics, parts.shared_metrics)
    )
    app.register_blueprint(health.create_blueprint(health_monitor))
    app.register_blueprint(rum.create_blueprint(app.url_map, settings, metrics))
    app.register_blueprint(
        auth.create_blueprint(
            settings,
            metrics,
            parts.sessions,
            database,
            cache,
            parts.passwords,
            parts.local_sessions,
        )
    )
    metrics.expect_rate_limits(rate_limited_routes(app))
    # After every part's start-up hook, so that `service_started` means every part is open.
    init_lifecycle(app, parts.lifecycle)
    app.asgi_app = _asgi_stack(app.asgi_app, parts)  # type: ignore[method-assign,assignment]
    return app


def _asgi_stack(quart: ASGIFramework, parts: Parts) -> ASGIFramework:
    """The ASGI layers around Quart, outermost first: each sees what the ones inside it do, and
    `scene-packer serve`'s workers serve this stack as it is."""
    settings = parts.settings
    layers: list[Callable[[ASGIFramework], ASGIFramework] | None] = [
        # The stop's view of every request, probes and early answers included: in flight (the
        # drain's line, the end of a stop, recycling); `Connection: close` once draining.
        parts.gate.around,
        # Behind trusted proxies, everything inside (the request record too) sees the client's
        # address.
        (lambda inner: ProxyFix(inner, settings.trusted_proxies))
        if settings.trusted_proxies
        else None,
        # Outside the request record: an answer the record gives (a deadline's 503) is an
        # answer before the body too.
        CloseAfterUnreadBody,
        # Request ids, metrics and the one log line of every request (REQUEST_OBSERVABILITY).
        (lambda inner: RequestObserver(inner, settings, parts.metrics, parts.lifecycle))
        if settings.request_observability
        else None,
        # Probes answered before Quart, inside the record: they are requests too.
        lambda inner: ProbeEdge(inner, parts.health),
        # The signed-in read a worker has answered before, from its copy (with Redis).
        (
            lambda inner: SignedInEdge(
                inner, local, parts.active_users, SESSION_COOKIE_NAME, parts.metrics.cache_requests
            )
        )
        if (local := parts.local_sessions) is not None
        else None,
    ]
    app = quart
    for layer in reversed(layers):
        if layer is not None:
            app = layer(app)
    return app
