"""The application factory: build Quart, set up each part, register the blueprints."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any
from urllib.parse import urlsplit

import structlog
from quart import Quart
from quart.ctx import RequestContext
from quart.globals import request_ctx
from quart.sessions import NullSession, SessionInterface, SessionMixin
from quart.typing import ResponseReturnValue, ResponseTypes
from quart.wrappers import BaseRequestWebsocket, Response
from werkzeug.exceptions import NotFound

from service.auth import routes as auth
from service.auth.active_users import ActiveUsers, init_active_users
from service.auth.passwords import init_passwords
from service.auth.rate_limits import init_rate_limits, rate_limited_routes
from service.auth.sessions import init_sessions, settle_session_cookie
from service.backends.cache import init_cache
from service.backends.db import init_db
from service.blueprints import meta, rum
from service.blueprints import metrics as metrics_blueprint
from service.health import routes as health
from service.health.checks import init_health
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
from service.http.proxy_fix import ProxyFix
from service.http.request_record import (
    ExcInfo,
    RequestObserver,
    bind_route_of,
    log_request_failure,
)
from service.http.wrappers import ServiceRequest
from service.observability.context import bind_user, current_context
from service.observability.logging import configure_logging
from service.observability.metrics import init_metrics, instrument_engine
from service.observability.multiprocess import init_worker_snapshots
from service.serving.lifecycle import Lifecycle, StopReason, init_lifecycle
from service.settings import Settings, load_settings
from service.unavailable import DEPENDENCIES, Dependency, FailureReason

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


class ServiceApp(Quart):
    request_class = ServiceRequest
    session_interface = _NoCookieSession()  # type: ignore[assignment]  # Quart names its own
    active_users: ActiveUsers  # who to tell about a signed-in user
    deadlines: Deadlines  # REQUEST_TIMEOUT, kept per request
    # Told which dependency a request was waiting on when its deadline passed.
    dependency_failed: Callable[[Dependency, FailureReason], None] | None = None
    lifecycle: Lifecycle

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._async_functions: dict[Callable[..., Any], Callable[..., Awaitable[Any]]] = {}

    def begin_draining(self, reason: StopReason, in_flight: int) -> None:
        """Called by the supervisor (service/serving/supervisor.py) when this worker is to stop."""
        self.lifecycle.begin_draining(reason, in_flight)

    def stop_in_flight(self) -> int:
        """Called by the supervisor when graceful_timeout is nearly over: every request still
        being worked on is cancelled and answered 503 `shutting_down` (hypercorn would cancel it
        with an empty 500). How many."""
        return self.deadlines.stop_all()

    def abandon(self, tasks: Collection[asyncio.Task[Any]]) -> None:
        """Called by the supervisor before it closes the connections of `tasks`, requests whose
        answer the client has not taken by the end of graceful_timeout: their lines say so."""
        self.lifecycle.abandon(tasks)

    async def full_dispatch_request(
        self, request_context: RequestContext | None = None
    ) -> ResponseTypes:
        # One deadline for everything a request waits on (pool, connect, statement, Redis, the
        # hashing queue), instead of their own timeouts adding up. Past it the work is cancelled
        # (connections are returned or discarded by their context managers) and the client is
        # told to retry.
        task = self.deadlines.begin()
        try:
            return await super().full_dispatch_request(request_context)
        except asyncio.CancelledError:
            expiry = self.deadlines.expired(task)
            if expiry is None:
                raise
        finally:
            self.deadlines.end(task)
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
            timeout_seconds=self.deadlines.timeout,
            waiting_on=waited,
        )
        if waited in DEPENDENCIES and self.dependency_failed is not None:
            self.dependency_failed(waited, "timeout")
        answer = body_timeout() if client else deadline_exceeded()
        result = await self.handle_user_exception(answer)
        return await self.finalize_request(result, request_context)

    async def preprocess_request(
        self, request_context: RequestContext | None = None
    ) -> ResponseReturnValue | None:
        # Route and user are bound here rather than in a before_request hook: Quart wraps every
        # hook call in `ensure_async` (an `inspect` check per call), which cost more than the
        # binding itself on every request (bench/README.md, Instructions).
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
                request, self.active_users, self.deadlines.timeout / 2
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
    settings = settings if settings is not None else load_settings()
    configure_logging(settings)
    app = ServiceApp(__name__)
    # `/api//health` is no route: 404 like any other path, not werkzeug's HTML 308 to an address
    # built from the Host header.
    app.url_map.merge_slashes = False
    app.config.update(
        SECRET_KEY=settings.effective_secret_key,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
    )

    metrics = init_metrics(app, settings)
    health_monitor = init_health(app, settings, metrics)

    def database_failed(reason: FailureReason) -> None:
        metrics.dependency_failed("database", reason)
        health_monitor.database_failed(reason)  # a full disk makes the database check write

    init_db(
        app,
        settings,
        instrument=lambda engine: instrument_engine(engine, metrics),
        failed=database_failed,
    )
    init_cache(
        app,
        settings,
        metrics.cache_requests,
        metrics.cache_errors,
        failed=lambda reason: metrics.dependency_failed("cache", reason),
    )
    init_worker_snapshots(app, metrics, settings)
    app.active_users = init_active_users(app, settings, metrics)
    app.deadlines = Deadlines(settings.request_timeout)
    app.after_serving(app.deadlines.close)
    app.dependency_failed = metrics.dependency_failed
    init_rate_limits(app, settings)
    init_passwords(app, settings)
    sessions = init_sessions(app, settings, metrics)
    init_api_docs(app, settings)
    register_error_handlers(app)

    app.register_blueprint(meta.create_blueprint(settings))
    app.register_blueprint(metrics_blueprint.create_blueprint(settings, metrics))
    app.register_blueprint(health.blueprint)
    app.register_blueprint(rum.create_blueprint(app, settings, metrics))
    app.register_blueprint(auth.create_blueprint(settings, sessions, metrics))
    metrics.expect_rate_limits(rate_limited_routes(app))
    # After every part's start-up hook, so that `service_started` means every part is open.
    app.lifecycle = init_lifecycle(app, settings, health_monitor)
    # Inside the request record (request ids, metrics and log lines as for every request).
    app.asgi_app = ProbeEdge(app.asgi_app, health_monitor)  # type: ignore[method-assign]
    if settings.request_observability:
        app.asgi_app = RequestObserver(app.asgi_app, settings, metrics, app.lifecycle)  # type: ignore[method-assign]
    # Outside the request record: an answer it gives (a deadline's 503) is an answer too.
    app.asgi_app = CloseAfterUnreadBody(app.asgi_app)  # type: ignore[method-assign]
    if settings.trusted_proxies:
        # Outermost: everything inside, the request record included, sees the client's address.
        app.asgi_app = ProxyFix(app.asgi_app, settings.trusted_proxies)  # type: ignore[method-assign]
    return app
