"""Server-side sessions: logout ends a session everywhere, logout-all ends them all, expired and
idle sessions are refused, sessions survive a restart, and a failing store fails closed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart import Quart
from quart_auth import generate_auth_token
from quart_auth.extension import _AuthSerializer
from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.app import create_app
from service.db.models import LoginSession
from service.sessions import SESSION_COOKIE_NAME
from service.settings import Settings
from tests.conftest import (
    REDIS_URL,
    Client,
    _admin,
    _in_thread,
    in_database,
    login,
    make_settings,
    register,
    session_cookie,
)
from tests.support.faults import TcpProxy
from tests.support.metrics_helpers import parse, value
from tests.support.server import PRODUCTION_ENV, running_server


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """A connection of the test's own to the app's database, to age sessions for real."""
    engine = create_async_engine(settings.effective_database_url)
    yield engine
    await engine.dispose()


async def _age_sessions(engine: AsyncEngine, **values: datetime) -> None:
    async with engine.begin() as connection:
        await connection.execute(update(LoginSession).values(**values))


async def _session_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(select(func.count(LoginSession.id)))).scalar_one())


def _cookie(response: Any) -> str:
    return session_cookie(response).split("=", 1)[1]


def _use(client: Client, cookie: str) -> None:
    client.set_cookie("localhost", SESSION_COOKIE_NAME, cookie)  # type: ignore[attr-defined]


async def test_a_replayed_cookie_is_refused_after_logout(client: Client, app: Quart) -> None:
    await register(client)
    cookie = _cookie(await login(client))
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
    cookie = _cookie(await login(client))
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
    async with restarted.test_app():
        for _ in range(100):  # the purge runs as the app starts serving
            if await _session_rows(database) == 0:
                break
            await asyncio.sleep(0.05)
    assert await _session_rows(database) == 0


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
        cookie = _cookie(await login(client))
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


@asynccontextmanager
async def _serving_through(
    proxied: str, postgres_url: str, tmp_path: Path, **extra: Any
) -> AsyncIterator[tuple[Quart, TcpProxy]]:
    """The app on PostgreSQL and Redis, one of them (`database_url` or `redis_url`) reached
    through a proxy the test can cut and restore."""
    database = proxied == "database_url"
    target = make_url(postgres_url if database else REDIS_URL)
    proxy = TcpProxy(target.port or (5432 if database else 6379))
    await proxy.start()
    via_proxy = target.set(port=proxy.port).render_as_string(hide_password=False)
    settings = make_settings("postgres", postgres_url, tmp_path, **{proxied: via_proxy}, **extra)
    app = create_app(settings)
    try:
        async with app.test_app() as test_app:
            yield test_app, proxy
    finally:
        await proxy.cut()


async def test_the_session_store_down_fails_closed(postgres_url: str, tmp_path: Path) -> None:
    serving = _serving_through("database_url", postgres_url, tmp_path, db_pool_timeout=1)
    async with serving as (test_app, proxy):
        client = test_app.test_client()
        await register(client, "ivan")
        await login(client, "ivan")
        await proxy.cut()
        response = await client.get("/api/auth/me")
        assert response.status_code == 503
        assert (await response.get_json())["error"]["code"] == "service_unavailable"
        assert response.headers["Retry-After"] == "1"
        # A route that needs no session still answers with the cookie sent.
        assert (await client.get("/")).status_code == 200


async def test_a_logout_the_cache_missed_is_a_503_and_a_retry_lands(
    postgres_url: str, tmp_path: Path
) -> None:
    """Redis holds live sessions for a while: a revocation that cannot reach it must not claim
    success, and the retry must end the session."""
    async with _serving_through("redis_url", postgres_url, tmp_path) as (test_app, proxy):
        client = test_app.test_client()
        await register(client, "heidi")
        await login(client, "heidi")
        assert (await client.get("/api/auth/me")).status_code == 200  # now cached
        await proxy.cut()
        assert (await client.get("/api/auth/me")).status_code == 200  # the database answers
        response = await client.post("/api/auth/logout")
        assert response.status_code == 503
        await proxy.start()
        assert (await client.post("/api/auth/logout")).status_code == 204
        assert (await client.get("/api/auth/me")).status_code == 401


async def test_a_logout_all_the_cache_missed_ends_nothing_and_a_retry_ends_all(
    postgres_url: str, tmp_path: Path
) -> None:
    async with _serving_through("redis_url", postgres_url, tmp_path) as (test_app, proxy):
        phone, laptop = test_app.test_client(), test_app.test_client()
        await register(phone, "grace")
        for device in (phone, laptop):
            await login(device, "grace")
            assert (await device.get("/api/auth/me")).status_code == 200  # both cached
        await proxy.cut()
        response = await phone.post("/api/auth/logout-all")
        assert response.status_code == 503
        assert (await response.get_json())["error"]["code"] == "service_unavailable"
        await proxy.start()
        response = await phone.post("/api/auth/logout-all")
        assert response.status_code == 200
        assert await response.get_json() == {"sessions_ended": 2}
        assert (await laptop.get("/api/auth/me")).status_code == 401
        assert (await phone.get("/api/auth/me")).status_code == 401


async def test_a_new_login_replaces_the_browser_s_old_session(
    client: Client, app: Quart, database: AsyncEngine
) -> None:
    await register(client)
    old = _cookie(await login(client))
    await login(client)  # the same browser, its cookie sent
    assert await _session_rows(database) == 1
    replay = app.test_client()
    _use(replay, old)
    assert (await replay.get("/api/auth/me")).status_code == 401
    assert (await client.get("/api/auth/me")).status_code == 200


async def test_a_dead_cookie_is_cleared(client: Client, app: Quart) -> None:
    await register(client)
    cookie = _cookie(await login(client))
    await client.post("/api/auth/logout")
    replay = app.test_client()
    _use(replay, cookie)
    response = await replay.get("/")
    assert response.status_code == 200
    assert response.headers["Set-Cookie"].startswith(f"{SESSION_COOKIE_NAME}=;")


@pytest.mark.parametrize("backend", ["postgres", "embedded"])
def test_two_workers_refuse_a_logged_out_cookie_and_keep_sessions_over_a_restart(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = {**PRODUCTION_ENV, "SESSION_COOKIE_SECURE": "false", "LOG_LEVEL": "WARNING"}
    if backend == "postgres":
        settings = make_settings(backend, request.getfixturevalue("postgres_url"), tmp_path)
        env |= {
            "DATABASE_URL": settings.effective_database_url,
            "REDIS_URL": REDIS_URL,
            "CACHE_KEY_PREFIX": settings.cache_key_prefix,
        }
    config = {"workers": 2}
    credentials = {"username": f"two-{backend}", "password": "correct horse battery"}
    with running_server(tmp_path, env, app="tests.support.apps:app", config=config) as server:
        httpx.post(server.base_url + "/api/auth/register", json=credentials, timeout=10)
        login = httpx.post(server.base_url + "/api/auth/login", json=credentials, timeout=10)
        cookie = {"Cookie": f"{SESSION_COOKIE_NAME}={login.cookies[SESSION_COOKIE_NAME]}"}
        assert _answers_by_worker(server.base_url, cookie) == {200}
    with running_server(tmp_path, env, app="tests.support.apps:app", config=config) as server:
        assert _answers_by_worker(server.base_url, cookie) == {200}  # survived the restart
        logout = httpx.post(server.base_url + "/api/auth/logout", headers=cookie, timeout=10)
        assert logout.status_code == 204
        assert _answers_by_worker(server.base_url, cookie) == {401}


def _answers_by_worker(base_url: str, cookie: dict[str, str]) -> set[int]:
    """The statuses of GET /api/auth/me with this cookie header, asked until both workers
    answered (a new connection each time)."""
    statuses: dict[str, set[int]] = {}
    for _ in range(400):
        response = httpx.get(
            base_url + "/api/auth/me", headers={**cookie, "Connection": "close"}, timeout=10
        )
        statuses.setdefault(response.headers["X-Worker-PID"], set()).add(response.status_code)
        if len(statuses) == 2:
            break
    assert len(statuses) == 2, "one worker answered every request"
    return set().union(*statuses.values())


async def test_an_ending_the_database_refused_can_be_retried(
    postgres_url: str, tmp_path: Path
) -> None:
    """The database refuses the DELETE (a role without the privilege): the sessions stay ended
    in the cache, the cookie is kept, and the retry ends them for good."""
    role = f"no_delete_{uuid.uuid4().hex[:8]}"
    database = make_url(postgres_url).database
    _in_thread(_admin(f'CREATE ROLE "{role}" LOGIN'))
    grant = f'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO "{role}"'
    _in_thread(in_database(database, grant))
    _in_thread(in_database(database, f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{role}"'))
    as_role = make_url(postgres_url).set(username=role).render_as_string(hide_password=False)
    app = create_app(make_settings("postgres", postgres_url, tmp_path, database_url=as_role))
    try:
        async with app.test_app() as test_app:
            phone, laptop = test_app.test_client(), test_app.test_client()
            await register(phone, "judy")
            for device in (phone, laptop):
                await login(device, "judy")
                assert (await device.get("/api/auth/me")).status_code == 200

            refused = await phone.post("/api/auth/logout-all")
            assert refused.status_code == 500
            assert "Set-Cookie" not in refused.headers  # the cookie stays for the retry
            assert (await laptop.get("/api/auth/me")).status_code == 401  # ended meanwhile

            _in_thread(in_database(database, f'GRANT DELETE ON sessions TO "{role}"'))
            response = await phone.post("/api/auth/logout-all")
            assert response.status_code == 200
            assert await response.get_json() == {"sessions_ended": 2}
        async with engine_for(postgres_url) as engine:
            assert await _session_rows(engine) == 0
    finally:
        _in_thread(in_database(database, f'DROP OWNED BY "{role}"'))
        _in_thread(_admin(f'DROP ROLE IF EXISTS "{role}"'))


async def test_a_signed_cookie_that_is_not_a_token_is_refused(app: Quart) -> None:
    for payload in (123, ["a"], {"a": 1}, True, 1.5):
        forged = app.test_client()
        _use(forged, generate_auth_token(forged, payload))  # type: ignore[arg-type]
        assert (await forged.get("/")).status_code == 200
        assert (await forged.get("/api/auth/me")).status_code == 401
        assert (await forged.post("/api/auth/logout-all")).status_code == 401
        assert (await forged.post("/api/auth/logout")).status_code == 204


@asynccontextmanager
async def engine_for(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_an_unreadable_cache_entry_is_read_from_the_database(
    postgres_url: str, tmp_path: Path
) -> None:
    import redis.asyncio as aioredis

    from service.sessions import SESSION_COOKIE_SALT, stored_id

    settings = make_settings("postgres", postgres_url, tmp_path)
    app = create_app(settings)
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with app.test_app() as test_app:
            client = test_app.test_client()
            await register(client, "kate")
            cookie = _cookie(await login(client, "kate"))
            token = _AuthSerializer(app.secret_key, SESSION_COOKIE_SALT).loads(cookie)
            key = f"{settings.cache_key_prefix}session:{stored_id(token)}"
            await redis.set(key, b"\xff not json", ex=60)
            assert (await client.get("/api/auth/me")).status_code == 200
    finally:
        await redis.aclose()
