"""The ceiling: a bare Quart app answering the same trivial endpoint as the service's `GET /`."""

from __future__ import annotations

from quart import Quart

app = Quart(__name__)


@app.get("/")
async def index() -> dict[str, object]:
    return {
        "service": "eBook Scene Packer",
        "component": "api",
        "version": "2.0.0",
        "docs": {"openapi": "/openapi.json", "ui": "/docs"},
    }
