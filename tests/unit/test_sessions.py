"""Server-side sessions: logout ends a session everywhere, logout-all ends them all, expired and
idle sessions are refused, sessions survive a restart, and a failing store fails closed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from quart import Quart
from quart_auth import generate_auth_token
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.app import create_app
from service.auth.sessions import SESSION_COOKIE_NAME
from service.backends.db.models import LoginSession
from service.settings import Settings
from tests.support.backends import session_rows
from tests.support.client import Client, login, register, session_token
from tests.support.metrics_helpers import parse, value
from tests.support.waiting import until


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """A connection of the test's own to the app's database, to age sessions for real."""
    engine = create_async_engine(settings.effective_database_url)
    yield engine
    await engine.dispose()


async def _age_sessions(engine: AsyncEngine, **values: datetime) -> None:
    async with engine.begin() as connection:
        await connection.execute(update(LoginSession).values(**values))


def _use(client: Client, cookie: str) -> None:
    client.set_cookie("localhost", SESSION_COOKIE_NAME, cookie)  # type: ignore[attr-defined]


async def test_a_replayed_cookie_is_refused_after_logout(client: Client, app: Quart) -> None:
    await register(client)
    cookie = session_token(await login(client))
    assert (await client.get("/api/auth/me")).status_code == 200
    assert (await client.post("/api/auth/logout")).status_code == 204

    replay = app.test_client()
    _use(replay, cookie)
    response = await replay.get("/api/auth/me")
    assert response.status_code == 401
    assert (await response.get_json())["error"]["code"] == "unauthorized"
    # Logging out again with the dead cookie is harmless.
    assert (await replay.post("/api/auth/logout")).status_code == 204


async def test_the_cookie_carries_an_opaque_token_not_the_user_id(
    client: Client, database: AsyncEngine
) -> None:
    await register(client)
    cookie = session_token(await login(client))
    token = cookie.split(".", 1)[0]
    assert len(token) > 40 and token not in ("1", "IjEi")  # not a signed "1"
    async with database.connect() as connection:
        stored = (await connection.execute(select(LoginSession.id))).scalar_one()
    assert stored not in cookie  # the table holds a digest, not what the cookie carries


async def test_logout_all_ends_every_session_of_the_user(client: Client, app: Quart) -> None:
    await register(client)
    await register(client, "bob")
    phone, laptop, other_user = app.test_client(), app.test_client(), app.test_client()
    for device in (phone, laptop):
        assert (await login(device)).status_code == 200
    assert (await login(other_user, "bob")).status_code == 200

    response = await phone.post("/api/auth/logout-all")
    assert response.status_code == 200
    assert await response.get_json() == {"sessions_ended": 2}
    assert (await phone.get("/api/auth/me")).status_code == 401
    assert (await laptop.get("/api/auth/me")).status_code == 401
    assert (await other_user.get("/api/auth/me")).status_code == 200
    assert (await phone.post("/api/auth/logout-all")).status_code == 401


async def test_an_expired_session_is_refused_and_purged_at_start(
    client: Client, settings: Settings, database: AsyncEngine
) -> None:
    await register(client)
    await login(client)
    await _age_sessions(database, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert (await client.get("/api/auth/me")).status_code == 401

    restarted = create_app(settings)
    async with restarted.test_app():  # the purge runs as the app starts serving

        async def purged() -> bool:
            return await session_rows(database) == 0

        await until(purged, 30, "the expired session was never purged")


async def test_idle_sessions_expire_and_active_ones_slide(
    settings: Settings, database: AsyncEngine
) -> None:
    app = create_app(settings.model_copy(update={"session_idle_seconds": 60}))
    async with app.test_app() as test_app:
        active, idle = test_app.test_client(), test_app.test_client()
        await register(active)
        await login(active)
        await _age_sessions(database, last_seen_at=datetime.now(UTC) - timedelta(seconds=30))
        assert (await active.get("/api/auth/me")).status_code == 200
        async with database.connect() as connection:
            seen = (await connection.execute(select(LoginSession.last_seen_at))).scalar_one()
        seen = seen if seen.tzinfo else seen.replace(tzinfo=UTC)
        assert datetime.now(UTC) - seen < timedelta(seconds=15)  # the use was recorded

        await login(idle)
        await _age_sessions(database, last_seen_at=datetime.now(UTC) - timedelta(seconds=61))
        assert (await idle.get("/api/auth/me")).status_code == 401


async def test_a_session_survives_a_restart(settings: Settings) -> None:
    first = create_app(settings)
    async with first.test_app() as test_app:
        client = test_app.test_client()
        await register(client)
        cookie = session_token(await login(client))
    second = create_app(settings)
    async with second.test_app() as test_app:
        client = test_app.test_client()
        _use(client, cookie)
        response = await client.get("/api/auth/me")
    assert response.status_code == 200
    assert (await response.get_json())["username"] == "alice"


async def test_session_metrics(client: Client, app: Quart) -> None:
    await register(client)
    other = app.test_client()
    await login(client)
    await login(other)
    await login(other, password="a wrong password")
    await other.post("/api/auth/logout")
    samples = parse(await (await client.get("/metrics")).get_data(as_text=True))
    assert value(samples, "auth_sessions_active") == 1
    assert value(samples, "auth_logins_total", result="success") == 2
    assert value(samples, "auth_logins_total", result="invalid_credentials") == 1
    assert value(samples, "auth_logouts_total", scope="session") == 1
    assert ("auth_logouts_total", frozenset({("scope", "all")})) in samples  # 0, not absent


async def test_a_new_login_replaces_the_browser_s_old_session(
    client: Client, app: Quart, database: AsyncEngine
) -> None:
    await register(client)
    old = session_token(await login(client))
    await login(client)  # the same browser, its cookie sent
    assert await session_rows(database) == 1
    replay = app.test_client()
    _use(replay, old)
    assert (await replay.get("/api/auth/me")).status_code == 401
    assert (await client.get("/api/auth/me")).status_code == 200


@pytest.mark.parametrize("observability", [True, False], ids=["observed", "unobserved"])
async def test_a_dead_cookie_is_cleared_and_a_live_one_counted(
    settings: Settings, observability: bool
) -> None:
    """Sign-in behaviour, whatever REQUEST_OBSERVABILITY says (it switches the request record
    only): a signed-in request counts its user as active, and a dead cookie is cleared on any
    route. Both ran only with the switch on."""
    app = create_app(settings.model_copy(update={"request_observability": observability}))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await register(client)
        cookie = session_token(await login(client))
        assert (await client.get("/")).status_code == 200
        samples = parse(await (await client.get("/metrics")).get_data(as_text=True))
        assert value(samples, "active_users") == 1
        await client.post("/api/auth/logout")
        replay = test_app.test_client()
        _use(replay, cookie)
        response = await replay.get("/")
    assert response.status_code == 200
    assert response.headers["Set-Cookie"].startswith(f"{SESSION_COOKIE_NAME}=;")


async def test_a_signed_cookie_that_is_not_a_token_is_refused(app: Quart) -> None:
    for payload in (123, ["a"], {"a": 1}, True, 1.5):
        forged = app.test_client()
        _use(forged, generate_auth_token(forged, payload))  # type: ignore[arg-type]
        assert (await forged.get("/")).status_code == 200
        assert (await forged.get("/api/auth/me")).status_code == 401
        assert (await forged.post("/api/auth/logout-all")).status_code == 401
        assert (await forged.post("/api/auth/logout")).status_code == 204
