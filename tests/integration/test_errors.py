"""Every failure is a JSON error with the right status and no internals."""

from __future__ import annotations

import pytest
from quart import Quart

from service.app import create_app
from service.settings import Settings
from tests.support.client import login


async def _error(response: object) -> dict[str, str]:
    body = await response.get_json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    return body["error"]  # type: ignore[no-any-return]


async def test_rate_limit_is_shared_by_two_instances_through_redis(settings: Settings) -> None:
    limited = settings.model_copy(update={"login_limit_per_username": 4})
    first, second = create_app(limited), create_app(limited)
    async with first.test_app() as app_a, second.test_app() as app_b:
        client_a, client_b = app_a.test_client(), app_b.test_client()
        for client in (client_a, client_b, client_a, client_b):
            assert (await login(client, "frank", "wrong password")).status_code == 401
        assert (await login(client_b, "frank", "wrong password")).status_code == 429
        assert (await login(client_a, "frank", "wrong password")).status_code == 429


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_cache_outage_makes_login_503_not_500(settings: Settings) -> None:
    broken = settings.model_copy(update={"redis_url": _secret("redis://127.0.0.1:1/0")})
    app: Quart = create_app(broken)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        response = await login(client, "gina", "whatever password")
    assert response.status_code == 503
    assert (await _error(response))["code"] == "service_unavailable"
    assert "127.0.0.1" not in await response.get_data(as_text=True)


def _secret(value: str) -> object:
    from pydantic import SecretStr

    return SecretStr(value)
