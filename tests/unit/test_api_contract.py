"""The service holds to its own OpenAPI document: schemathesis generates requests for every
operation (valid and invalid bodies, odd headers) and checks every answer against the document,
with all its checks on. A fixed seed and a bounded number of examples keep it repeatable."""

from __future__ import annotations

import re

import pytest

from service.app import create_app
from service.settings import Settings
from tests.support.client import Client


async def test_docs_need_no_internet(client: Client) -> None:
    page = await (await client.get("/docs")).get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(asset.startswith("/docs/assets/") for asset in assets), assets
    for asset in assets:
        response = await client.get(asset)
        assert response.status_code == 200
        assert len(await response.get_data()) > 1000
    assert (await client.get("/docs/assets/../../service/settings.py")).status_code == 404


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_api_docs_can_be_switched_off(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"api_docs": False}))
    client = app.test_client()
    for path in ("/openapi.json", "/docs", "/docs/assets/swagger-ui.css"):
        assert (await client.get(path)).status_code == 404, path
    index = await client.get("/")
    assert index.status_code == 200
    assert "docs" not in await index.get_json()  # nothing points at them


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_the_document_lists_only_what_is_served(settings: Settings) -> None:
    # As in production, where the demo page is off by default. (Production settings are not
    # used in-process: they cache the module loggers, which later tests reconfigure.)
    client = create_app(settings.model_copy(update={"rum_demo_enabled": False})).test_client()
    document = await (await client.get("/openapi.json")).get_json()
    assert set(document["paths"]) == {
        "/",
        "/api/auth/login",
        "/api/auth/logout",
        "/api/auth/logout-all",
        "/api/auth/me",
        "/api/auth/register",
        "/api/health",
        "/api/health/live",
        "/api/health/ready",
        "/api/rum",
    }
    assert (await client.get("/rum/demo")).status_code == 404
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"], f"{method} {path} declares no response"
