"""What this service is: the root description."""

from __future__ import annotations

from pydantic import BaseModel
from quart import Blueprint, Response, jsonify
from quart_schema import document_response

from service.version import VERSION

blueprint = Blueprint("meta", __name__)


_DESCRIPTION = {
    "service": "eBook Scene Packer",
    "component": "api",
    "version": VERSION,
    "docs": {"openapi": "/openapi.json", "ui": "/docs"},
}


class ServiceDescription(BaseModel):
    service: str
    component: str
    version: str
    docs: dict[str, str]


@blueprint.get("/")
@document_response(ServiceDescription, 200)
async def index() -> Response:
    # A Response, not a dict: quart-schema converts returned dicts through a new pydantic
    # TypeAdapter on every request (about 40 µs here), see bench/README.md.
    return jsonify(_DESCRIPTION)
