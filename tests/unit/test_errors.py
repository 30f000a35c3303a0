"""Every failure is a JSON error with the right status and no internals."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service.app import create_app
from service.settings import Settings
from tests.support.client import Client, login, register


async def _error(response: object) -> dict[str, str]:
    body = await response.get_json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    return body["error"]  # type: ignore[no-any-return]


async def test_unknown_route_is_404_json(client: Client) -> None:
    response = await client.get("/no/such/thing")
    assert response.status_code == 404
    assert (await _error(response))["code"] == "not_found"


async def test_wrong_method_is_405_with_allow(client: Client) -> None:
    response = await client.get("/api/auth/login")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert (await _error(response))["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/no/such/thing", 404),
        ("POST", "/api/health", 405),
        ("DELETE", "/api/health/live", 405),
        ("POST", "/metrics", 405),
        ("GET", "/api/auth/me", 401),
    ],
)
async def test_no_cache_keeps_an_error(client: Client, method: str, path: str, status: int) -> None:
    """HTTP lets a shared cache keep a 404 or a 405 by default; each names one request."""
    response = await client.open(path, method=method)
    assert response.status_code == status
    assert response.headers["Cache-Control"] == "no-store"
    assert (await _error(response))["request_id"] == response.headers["X-Request-ID"]


@pytest.mark.parametrize("path", ["/api//health", "/api/auth//me", "/api/auth/me//"])
async def test_a_doubled_slash_is_a_json_404_not_a_redirect(client: Client, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert "Location" not in response.headers
    assert (await _error(response))["code"] == "not_found"


@pytest.mark.parametrize(
    "body",
    [
        {"username": "x", "password": "long enough password"},
        {"username": "alice"},
        {"username": "al ice!", "password": "long enough password"},
        {"username": "alice", "password": ""},
        {"username": "alice", "password": "p" * 257},
        ["not", "an", "object"],
    ],
)
async def test_invalid_register_body_is_400_without_echoing_input(
    client: Client, body: object
) -> None:
    response = await client.post("/api/auth/register", json=body)
    assert response.status_code == 400
    error = await _error(response)
    assert error["code"] == "invalid_body"
    assert error["details"]
    text = await response.get_data(as_text=True)
    assert "long enough password" not in text
    assert "NewAccount" not in text  # pydantic names the model when the body is not an object


@pytest.mark.parametrize("path", ["/api/auth/register", "/api/auth/login"])
async def test_a_body_that_is_not_json_is_415(client: Client, path: str) -> None:
    response = await client.post(
        path, data=b"username=alice", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    error = await _error(response)
    assert error["code"] == "unsupported_media_type"
    assert error["request_id"] == response.headers["X-Request-ID"]


async def test_malformed_json_is_400(client: Client) -> None:
    response = await client.post(
        "/api/auth/login", data=b'{"username": ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert (await _error(response))["code"] == "bad_request"


async def test_oversized_body_is_413(client: Client, settings: Settings) -> None:
    blob = "x" * (settings.max_body_bytes + 1)
    response = await client.post(
        "/api/auth/register",
        data=f'{{"username": "alice", "password": "{blob}"}}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert (await _error(response))["code"] == "body_too_large"


async def test_login_over_the_limit_is_429_with_retry_after(
    settings: Settings, tmp_path: Path
) -> None:
    limited = settings.model_copy(update={"login_limit_per_username": 3})
    app = create_app(limited)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await register(client, "dave")
        statuses = [(await login(client, "dave", "wrong password")).status_code for _ in range(3)]
        assert statuses == [401, 401, 401]
        response = await login(client, "dave")
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert (await _error(response))["code"] == "rate_limited"
        # Another username from the same address is still allowed.
        assert (await login(client, "erin", "wrong password")).status_code == 401


async def test_login_responses_say_how_many_attempts_are_left(settings: Settings) -> None:
    limited = settings.model_copy(update={"login_limit_per_ip": 3, "login_limit_per_username": 10})
    app = create_app(limited)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        responses = [await login(client, "ivan", "wrong password") for _ in range(4)]
    assert [response.status_code for response in responses] == [401, 401, 401, 429]
    assert [response.headers["RateLimit-Remaining"] for response in responses] == [
        "2", "1", "0", "0"
    ]  # fmt: skip
    window = limited.rate_limit_window_seconds
    for response in responses:
        assert response.headers["RateLimit-Limit"] == "3"
        assert 1 <= int(response.headers["RateLimit-Reset"]) <= window


async def test_concurrent_attempts_cannot_overshoot_the_limit(settings: Settings) -> None:
    limited = settings.model_copy(update={"login_limit_per_username": 5})
    first, second = create_app(limited), create_app(limited)
    async with first.test_app() as app_a, second.test_app() as app_b:
        clients = [app_a.test_client(), app_b.test_client()]
        responses = await asyncio.gather(
            *(login(clients[i % 2], "hana", "wrong password") for i in range(30))
        )
    statuses = sorted(response.status_code for response in responses)
    if settings.redis_url is not None:  # shared across instances through Redis
        assert statuses == [401] * 5 + [429] * 25
    else:  # the in-process cache: each instance has its own limit
        assert statuses == [401] * 10 + [429] * 20


async def test_unhandled_exception_is_500_without_internals(settings: Settings) -> None:
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> str:
        raise RuntimeError("secret internal detail /etc/passwd")

    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/boom")
    assert response.status_code == 500
    text = await response.get_data(as_text=True)
    assert "secret internal detail" not in text and "Traceback" not in text
    assert (await _error(response))["code"] == "internal_error"


@pytest.mark.parametrize("path", ["/api/auth/login", "/api/auth/register"])
@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xff", "application/json"),  # not UTF-8
        (b'{"username": "bob\xff", "password": "x"}', "application/json"),
        (b"[" * 5000 + b"]" * 5000, "application/json"),  # nested deeper than any parser allows
        (b'{"username": "bob", "password": 1e999}', "application/json"),  # infinity
        (b'"\\ud800"', "application/json"),  # a lone surrogate
        (
            '{"username": "bob", "password": "x"}'.encode("utf-16"),
            "application/json; charset=utf-16",
        ),
    ],
)
async def test_undecodable_json_is_400_not_500(
    client: Client, path: str, body: bytes, content_type: str
) -> None:
    response = await client.post(path, data=body, headers={"Content-Type": content_type})
    assert response.status_code == 400
    error = await _error(response)
    assert error["code"] == "bad_request"
    assert error["request_id"] == response.headers["X-Request-ID"]
