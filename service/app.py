"""The application factory: build Quart, set up each part, register the blueprints."""

from __future__ import annotations

from contextlib import suppress
from types import TracebackType

import structlog
from quart import Quart
from quart.ctx import RequestContext
from quart.globals import request_ctx
from quart.typing import ResponseReturnValue
from quart.wrappers import Request
from quart_schema import QuartSchema

from service.active_users import ActiveUsers, init_active_users
from service.blueprints import auth, health, meta, rum
from service.blueprints import metrics as metrics_blueprint
from service.cache import CacheError, init_cache
from service.db import init_db
from service.errors import register_error_handlers
from service.observability.context import bind_route, bind_user, current_context
from service.observability.health import init_health
from service.observability.logging import configure_logging
from service.observability.metrics import init_metrics, instrument_engine
from service.observability.middleware import RequestObserver
from service.observability.multiprocess import init_worker_snapshots
from service.passwords import init_passwords
from service.rate_limits import init_rate_limits
from service.sessions import SESSION_COOKIE_NAME, current_session, expire_cookie, init_sessions
from service.settings import Settings, load_settings
from service.version import VERSION

logger = structlog.get_logger("service.request")

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]


class ServiceApp(Quart):
    # Set by create_app when REQUEST_OBSERVABILITY is on: who to tell about a signed-in user.
    active_users: ActiveUsers | None = None

    async def preprocess_request(
        self, request_context: RequestContext | None = None
    ) -> ResponseReturnValue | None:
        # Route and user are bound here rather than in a before_request hook: Quart wraps every
        # hook call in `ensure_async` (an `inspect` check per call), which cost more than the
        # binding itself on every request (bench/README.md, Instructions).
        if self.active_users is not None:
            request = (request_context or request_ctx).request
            await _bind_request_context(request, self.active_users)
        return await super().preprocess_request(request_context)

    def log_exception(self, exc_info: _ExcInfo) -> None:
        # The one server-side record of an unhandled exception; the client only sees a 500.
        logger.error("request_failed", exc_info=exc_info)


def create_app(settings: Settings | None = None) -> ServiceApp:
    settings = settings if settings is not None else load_settings()
    configure_logging(settings)
    app = ServiceApp(__name__)
    app.config.update(
        SECRET_KEY=settings.effective_secret_key,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
    )

    metrics = init_metrics(app, settings)
    init_db(app, settings, instrument=lambda engine: instrument_engine(engine, metrics))
    init_cache(app, settings, metrics.cache_requests, metrics.cache_errors)
    init_health(app, settings, metrics)
    init_worker_snapshots(app, metrics, settings)
    active_users = init_active_users(app, settings, metrics)
    if settings.request_observability:
        app.active_users = active_users
    init_rate_limits(app, settings)
    init_passwords(app, settings)
    sessions = init_sessions(app, settings, metrics)
    QuartSchema(
        app,
        info={"title": "eBook Scene Packer API", "version": VERSION},
        redoc_ui_path=None,
        scalar_ui_path=None,
    )
    register_error_handlers(app)

    app.register_blueprint(meta.blueprint)
    app.register_blueprint(metrics_blueprint.create_blueprint(settings, metrics))
    app.register_blueprint(health.blueprint)
    app.register_blueprint(rum.create_blueprint(app, settings, metrics))
    app.register_blueprint(auth.create_blueprint(settings, sessions, metrics))
    if settings.request_observability:
        app.asgi_app = RequestObserver(app.asgi_app, settings, metrics)  # type: ignore[method-assign]
    return app


async def _bind_request_context(request: Request, active_users: ActiveUsers) -> None:
    context = current_context()
    if context is None:
        return
    rule = request.url_rule
    if rule is not None:
        bind_route(rule.rule)
    if context.has_cookies and SESSION_COOKIE_NAME in request.cookies:
        # Any route may carry the cookie; its user is logged when the session can be looked up.
        # A lookup that fails must not fail a route that needs no session: the routes that do
        # need one meet the same failure (sessions.SessionUser remembers it) and answer 503.
        try:
            session = await current_session()
        except Exception:
            return
        if session is None:
            expire_cookie()  # a dead or forged cookie: tell the browser to stop sending it
            return
        bind_user(session.user_id)
        # A cache failure is counted by the cache wrapper; it must not fail the request.
        with suppress(CacheError):
            await active_users.mark(session.user_id)
