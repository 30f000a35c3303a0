"""The application factory: build Quart, set up each part, register the blueprints."""

from __future__ import annotations

from quart import Quart
from quart_auth import QuartAuth
from quart_schema import QuartSchema

from service.blueprints import auth, meta
from service.cache import init_cache
from service.db import init_db
from service.errors import register_error_handlers
from service.rate_limits import init_rate_limits
from service.settings import Settings, load_settings
from service.version import VERSION

SESSION_COOKIE_NAME = "scene_packer_session"


def create_app(settings: Settings | None = None) -> Quart:
    settings = settings if settings is not None else load_settings()
    app = Quart(__name__)
    app.config.update(
        SECRET_KEY=settings.effective_secret_key,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        QUART_AUTH_COOKIE_NAME=SESSION_COOKIE_NAME,
        QUART_AUTH_COOKIE_SECURE=settings.cookie_secure,
        QUART_AUTH_DURATION=settings.session_duration_seconds,
        QUART_AUTH_SALT="scene-packer-session",
    )
    app.extensions["settings"] = settings

    init_db(app, settings)
    init_cache(app, settings)
    init_rate_limits(app, settings)
    QuartAuth(app)
    QuartSchema(
        app,
        info={"title": "eBook Scene Packer API", "version": VERSION},
        redoc_ui_path=None,
        scalar_ui_path=None,
    )
    register_error_handlers(app)

    app.register_blueprint(meta.blueprint)
    app.register_blueprint(auth.create_blueprint(settings))
    return app
