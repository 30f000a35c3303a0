"""Server-side sessions: logout ends a session everywhere, logout-all ends them all, expired and
idle sessions are refused, sessions survive a restart, and a failing store fails closed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr
from quart import Quart
from quart_auth.extension import _AuthSerializer
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.app import create_app
from tests.support.backends import REDIS_URL, admin, make_settings, session_rows
from tests.support.client import login, register, session_cookie, session_token
from tests.support.faults import HungServer, TcpProxy


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
        assert "Set-Cookie" not in response.headers  # the cookie stays for the retry
        async with engine_for(postgres_url) as engine:
            assert await session_rows(engine) == 1  # nothing deleted the cache was not told of
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


async def test_an_ending_the_database_refused_can_be_retried(
    postgres_url: str, tmp_path: Path
) -> None:
    """The database refuses the DELETE (a role without the privilege): the sessions stay ended
    in the cache, the cookie is kept, and the retry ends them for good."""
    role = f"no_delete_{uuid.uuid4().hex[:8]}"
    database = make_url(postgres_url).database
    admin(f'CREATE ROLE "{role}" LOGIN')
    grant = f'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO "{role}"'
    admin(grant, database)
    admin(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{role}"', database)
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

            admin(f'GRANT DELETE ON sessions TO "{role}"', database)
            response = await phone.post("/api/auth/logout-all")
            assert response.status_code == 200
            assert await response.get_json() == {"sessions_ended": 2}
        async with engine_for(postgres_url) as engine:
            assert await session_rows(engine) == 0
    finally:
        admin(f'DROP OWNED BY "{role}"', database)
        admin(f'DROP ROLE IF EXISTS "{role}"')


@asynccontextmanager
async def engine_for(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    "entry",
    [
        b"\xff not json",
        # Shapes `_remember` never writes: another user named loosely, a number no log line can
        # carry, a session that would never end.
        b"[true, 4102444800, 0]",
        b"[1.5, 4102444800, 0]",
        b'["1", 4102444800, 0]',
        b"[99999999999999999999999, 4102444800, 0]",
        b'[1, "inf", "inf"]',
    ],
)
async def test_an_unreadable_cache_entry_is_read_from_the_database(
    postgres_url: str, tmp_path: Path, entry: bytes
) -> None:
    import redis.asyncio as aioredis

    from service.auth.sessions import SESSION_COOKIE_SALT, stored_id

    settings = make_settings("postgres", postgres_url, tmp_path)
    app = create_app(settings)
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with app.test_app() as test_app:
            client = test_app.test_client()
            await register(client, "kate")
            cookie = session_token(await login(client, "kate"))
            token = _AuthSerializer(app.secret_key, SESSION_COOKIE_SALT).loads(cookie)
            key = f"{settings.cache_key_prefix}session:{stored_id(token)}"
            await redis.set(key, entry, ex=60)
            answer = await client.get("/api/auth/me")
            assert answer.status_code == 200
            assert (await answer.get_json())["username"] == "kate"
    finally:
        await redis.aclose()


async def test_a_hung_redis_is_waited_for_once_a_request(postgres_url: str, tmp_path: Path) -> None:
    """A signed-in read with Redis accepting connections and never answering: the first command
    waits its timeout, the rest of the request does not ask again (the hung server sees one
    connection, not one per command), and the read is answered from the database."""
    settings = make_settings(
        "postgres",
        postgres_url,
        tmp_path,
        redis_socket_timeout=0.2,
        health_refresh_seconds=0,
        session_local_copies=False,  # its channel would connect to the hung server too
    )
    app = create_app(settings)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await register(client, "ivan")
        cookie = session_cookie(await login(client, "ivan"))
    hung = HungServer()
    await hung.start()
    try:
        hung_redis = settings.model_copy(
            update={"redis_url": SecretStr(f"redis://127.0.0.1:{hung.port}/0")}
        )
        app = create_app(hung_redis)
        async with app.test_app() as test_app:
            before = hung.connections  # the health check's own probe, as the app starts
            me = await test_app.test_client().get("/api/auth/me", headers={"Cookie": cookie})
            connections = hung.connections - before
    finally:
        await hung.stop()
    assert me.status_code == 200 and (await me.get_json())["username"] == "ivan"
    assert connections <= 1


async def _as_redis_sees_it(client: Any, prefix: str) -> tuple[Any, list[dict[str, Any]]]:
    """`GET /api/auth/me` and the commands on keys under `prefix` that Redis saw meanwhile
    (MONITOR), until a marker of ours."""
    watcher = aioredis.Redis.from_url(REDIS_URL)
    marker = f"end-{uuid.uuid4().hex}"
    try:
        async with watcher.monitor() as monitor:
            answer = await client.get("/api/auth/me")
            await watcher.echo(marker)
            seen = []
            while marker not in (command := await monitor.next_command())["command"]:
                if prefix in command["command"]:
                    seen.append(command)
    finally:
        await watcher.aclose()
    return answer, seen


async def test_a_signed_in_read_is_one_round_trip_to_redis(
    postgres_url: str, tmp_path: Path
) -> None:
    """The cached session and its user's cached profile come back in one command (a script that
    reads both), as Redis itself sees the requests (MONITOR); a profile missing from the cache
    is not asked for a second time. With SESSION_LOCAL_COPIES off, every read is this one."""
    settings = make_settings("postgres", postgres_url, tmp_path, session_local_copies=False)
    prefix = settings.cache_key_prefix
    app = create_app(settings)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await register(client, "una")
        await login(client, "una")
        first = await client.get("/api/auth/me")  # caches the session, then the profile
        assert (await client.get("/api/auth/me")).status_code == 200
        answer, seen = await _as_redis_sees_it(client, prefix)
        evicted = aioredis.Redis.from_url(REDIS_URL)
        try:
            user_id = (await first.get_json())["id"]
            assert await evicted.delete(f"{prefix}profile:{user_id}") == 1
        finally:
            await evicted.aclose()
        after_a_miss, seen_after = await _as_redis_sees_it(client, prefix)
    assert answer.status_code == 200 and await answer.get_json() == await first.get_json()
    sent = [c["command"].split()[0] for c in seen if c["client_type"] != "lua"]
    inside = [c["command"].split() for c in seen if c["client_type"] == "lua"]
    assert sent == ["EVALSHA"]
    assert [(verb, key.removeprefix(prefix).split(":")[0]) for verb, key, *_ in inside] == [
        ("GET", "session"),
        ("GET", "profile"),
    ]
    # The miss came with the session: the database answers and the profile is cached again.
    assert await after_a_miss.get_json() == await first.get_json()
    assert [c["command"].split()[0] for c in seen_after if c["client_type"] != "lua"] == [
        "EVALSHA",
        "SET",
    ]
