"""What this service is: the root description."""

from __future__ import annotations

from quart import Blueprint

from service.version import VERSION

blueprint = Blueprint("meta", __name__)


@blueprint.get("/")
async def index() -> dict[str, object]:
    return {
        "service": "eBook Scene Packer",
        "component": "api",
        "version": VERSION,
        "docs": {"openapi": "/openapi.json", "ui": "/docs"},
    }
