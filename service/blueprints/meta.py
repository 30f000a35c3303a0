"""What this service is: the root description."""

from __future__ import annotations

from pydantic import BaseModel
from quart import Blueprint, Response, jsonify
from quart_schema import document_response, tag_blueprint

from service.settings import Settings
from service.version import VERSION


class ServiceDescription(BaseModel):
    service: str
    component: str
    version: str
    docs: dict[str, str] | None = None  # absent with API_DOCS=false


def create_blueprint(settings: Settings) -> Blueprint:
    blueprint = Blueprint("meta", __name__)
    tag_blueprint(blueprint, ["service"])
    description: dict[str, object] = {
        "service": "eBook Scene Packer",
        "component": "api",
        "version": VERSION,
    }
    if settings.api_docs:
        description["docs"] = {"openapi": "/openapi.json", "ui": "/docs"}

    @blueprint.get("/")
    @document_response(ServiceDescription, 200)
    async def index() -> Response:
        """The service's name and version."""
        # A Response, not a dict: quart-schema converts returned dicts through a new pydantic
        # TypeAdapter on every request (about 40 µs here, measured when this was written).
        return jsonify(description)

    return blueprint
