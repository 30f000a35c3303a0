"""The OpenAPI document (`/openapi.json`) and its browsable docs (`/docs`), or neither
(API_DOCS=false).

Every operation declares its answers, errors included, so the document can check the service
(the suite runs schemathesis over it). Swagger UI's files come from a maintained package
(flask-swagger-ui, which ships Swagger UI's own release files and needs only Flask, already a
dependency of Quart) and are served here: `/docs` works without internet access.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from quart import Quart, Response, abort, send_from_directory
from quart_schema import QuartSchema, document_response, hide
from quart_schema.openapi import OpenAPIProvider

from service.http.errors import ErrorBody
from service.http.wrappers import ServiceJSONProvider
from service.settings import Settings
from service.version import VERSION

DOCS_ASSETS_PATH = "/docs/assets"
_SWAGGER_FILES = {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE"}
_ASSET_MAX_AGE = 86400

Route = TypeVar("Route", bound=Callable[..., Any])


def declare_errors(*statuses: int) -> Callable[[Route], Route]:
    """Declare the error answers (the `ErrorBody` shape) a route can give."""

    def declare(route: Route) -> Route:
        for status in statuses:
            route = document_response(ErrorBody, status)(route)
        return route

    return declare


def _quart_schema(app: Quart, **options: Any) -> None:
    """quart-schema on the app, with its per-answer work made cheaper (the two below)."""
    QuartSchema(app, **options)
    _convert_only_models(app)
    _render_with_orjson(app)


def _render_with_orjson(app: Quart) -> None:
    """quart-schema installs its JSON provider (the standard library's encoder, with pydantic's
    conversion for what JSON has no type for); this one renders through orjson
    (service/http/wrappers.py) and keeps quart-schema's conversion."""
    app.json = ServiceJSONProvider(app, default=getattr(app.json, "default", None))


def _convert_only_models(app: Quart) -> None:
    """quart-schema wraps `make_response` to turn returned models into JSON, on every answer;
    the routes here return finished Responses, for which the conversion did nothing at a cost of
    a few microseconds (two `model_dump` passes reading the app's config). Those go straight to
    Quart's; anything else still goes through quart-schema."""
    converting = app.make_response
    plain = type(app).make_response.__get__(app)

    async def make_response(result: Any) -> Any:
        if isinstance(result, Response):
            return await plain(result)
        return await converting(result)

    app.make_response = make_response  # type: ignore[method-assign]


class NoContent:
    """Declares an answer without a body: `document_response(NoContent, 204)`."""


class _Provider(OpenAPIProvider):
    def build_request_body(self, *args: Any, **kwargs: Any) -> Any:
        # quart-schema leaves a declared body optional; every body this API declares is required.
        body, components = super().build_request_body(*args, **kwargs)
        return {**body, "required": True}, components

    def build_response_object(self, model: Any, headers_model: Any) -> Any:
        if model is NoContent:
            return {"description": "No content."}, {}
        return super().build_response_object(model, headers_model)


def init_api_docs(app: Quart, settings: Settings) -> None:
    if not settings.api_docs:
        _quart_schema(
            app, openapi_path=None, swagger_ui_path=None, redoc_ui_path=None, scalar_ui_path=None
        )
        return
    _quart_schema(
        app,
        info={"title": "eBook Scene Packer API", "version": VERSION},
        tags=[
            {"name": "sign-in", "description": "Accounts, sessions and the signed-in profile."},
            {"name": "health", "description": "For load balancers and orchestrators."},
            {"name": "frontend monitoring", "description": "Beacons from browsers."},
            {"name": "service", "description": "What this service is."},
        ],
        redoc_ui_path=None,
        scalar_ui_path=None,
        openapi_provider_class=_Provider,
    )
    app.config.update(
        QUART_SCHEMA_SWAGGER_JS_URL=f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
        QUART_SCHEMA_SWAGGER_CSS_URL=f"{DOCS_ASSETS_PATH}/swagger-ui.css",
    )
    swagger_dist = _swagger_dist()

    @app.get(f"{DOCS_ASSETS_PATH}/<name>")
    @hide
    async def swagger_asset(name: str) -> Response:
        if name not in _SWAGGER_FILES:
            abort(404)
        return await send_from_directory(swagger_dist, name, cache_timeout=_ASSET_MAX_AGE)


def _swagger_dist() -> Path:
    """flask-swagger-ui's files, found without importing it (its module imports Flask)."""
    spec = importlib.util.find_spec("flask_swagger_ui")
    assert spec is not None and spec.submodule_search_locations, "flask-swagger-ui is missing"
    return Path(next(iter(spec.submodule_search_locations))) / "dist"
