"""One deadline per request (REQUEST_TIMEOUT): a hung dependency costs a client a bounded wait and
a 503 `dependency_timeout`, and the cancelled work gives back every connection it held."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
import structlog
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from service.app import create_app
from service.settings import Settings
from tests.support.client import Client, login, register, session_cookie
from tests.support.faults import HungServer, TcpProxy
from tests.support.metrics_helpers import parse, value
from tests.support.waiting import until

# Generous: only tells "bounded by the deadline" from "waited for the client timeouts" (60 s).
DEADLINE = 1.0
BOUND = DEADLINE + 5


def _hung(dependency: str, port: int) -> dict[str, Any]:
    # Every timeout of the dependency's own client far beyond the deadline: only it can answer.
    if dependency == "database":
        url = f"postgresql+asyncpg://x@127.0.0.1:{port}/x"
        return {
            "database_url": SecretStr(url),
            "db_connect_timeout": 60,
            "db_pool_timeout": 60,
            "db_statement_timeout": 60,
        }
    return {"redis_url": SecretStr(f"redis://127.0.0.1:{port}/0"), "redis_socket_timeout": 60}


@asynccontextmanager
async def _app_beside_a_hung_server(
    settings: Settings, changes: dict[str, Any], dependency: str
) -> AsyncIterator[Client]:
    """The app, with `dependency` pointed at a server that accepts and never answers (its
    client's own timeouts far off unless `changes` says otherwise)."""
    hung = HungServer()
    await hung.start()
    update = {"health_refresh_seconds": 0, **_hung(dependency, hung.port), **changes}
    app = create_app(settings.model_copy(update=update))
    try:
        async with app.test_app() as test_app:
            yield test_app.test_client()
    finally:
        await hung.stop()


@asynccontextmanager
async def _users_locked(postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    """The users table locked by another connection for the block (then rolled back); the
    connection is handed out for queries after the block, and closed by the caller."""
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    locker = await asyncpg.connect(dsn)
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        yield locker
        await transaction.rollback()
    except BaseException:
        await locker.close()
        raise


@pytest.mark.parametrize("dependency", ["database", "cache"])
async def test_a_hung_dependency_answers_503_dependency_timeout(
    settings: Settings, dependency: str
) -> None:
    changes = {"request_timeout": DEADLINE}
    async with _app_beside_a_hung_server(settings, changes, dependency) as client:
        with structlog.testing.capture_logs() as logs:
            started = time.monotonic()
            response = await asyncio.wait_for(login(client), BOUND * 3)
            elapsed = time.monotonic() - started
        assert response.status_code == 503
        body = await response.get_json()
        assert body["error"]["code"] == "dependency_timeout"
        assert body["error"]["request_id"] == response.headers["X-Request-ID"]
        assert response.headers["Retry-After"] == "1"
        assert elapsed < BOUND
        (line,) = [line for line in logs if line["event"] == "request_deadline_exceeded"]
        assert line["timeout_seconds"] == DEADLINE
        assert line["waiting_on"] == dependency
        samples = parse(await (await client.get("/metrics")).get_data(as_text=True))
        cause = {"dependency": dependency, "reason": "timeout"}
        assert value(samples, "dependency_errors_total", **cause) == 1


async def test_a_statement_cut_by_the_deadline_gives_its_connection_back(
    settings: Settings, postgres_url: str
) -> None:
    """A real PostgreSQL statement blocked on a lock: the deadline cancels it mid-flight, the
    server stops running it, and the pool has every connection back for the next request."""
    app = create_app(settings.model_copy(update={"request_timeout": DEADLINE}))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await register(client)).status_code == 201
        async with _users_locked(postgres_url) as locker:
            responses = await asyncio.wait_for(
                asyncio.gather(*(login(client) for _ in range(3))), BOUND * 3
            )
            assert [r.status_code for r in responses] == [503, 503, 503]
        # The server was told to stop the cancelled statements: none still waits on the lock.
        waiting = await locker.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'scene-packer'"
            " AND state = 'active' AND wait_event_type = 'Lock'"
        )
        await locker.close()
        assert waiting == 0
        assert app.parts.database.engine.sync_engine.pool.checkedout() == 0
        assert (await login(client)).status_code == 200


async def test_a_route_that_needs_no_session_answers_while_the_database_hangs(
    settings: Settings,
) -> None:
    """A browser with a real session cookie; then the database hangs (and no Redis holds the
    session). `GET /` still answers, within the lookup's half of the deadline; `/me` is 503."""
    async with create_app(settings).test_app() as test_app:
        client = test_app.test_client()
        assert (await register(client)).status_code == 201
        signed_in = await login(client)
        cookie = session_cookie(signed_in)
    hung = HungServer()
    await hung.start()
    changes = {
        "request_timeout": 2 * DEADLINE,
        "health_refresh_seconds": 0,
        **_hung("database", hung.port),
        "redis_url": None,
    }
    try:
        async with create_app(settings.model_copy(update=changes)).test_app() as test_app:
            client = test_app.test_client()
            started = time.monotonic()
            index = await asyncio.wait_for(client.get("/", headers={"Cookie": cookie}), BOUND * 3)
            elapsed = time.monotonic() - started
            me = await asyncio.wait_for(
                client.get("/api/auth/me", headers={"Cookie": cookie}), BOUND * 3
            )
    finally:
        await hung.stop()
    assert index.status_code == 200
    assert elapsed < BOUND
    assert me.status_code == 503
    assert (await me.get_json())["error"]["code"] == "service_unavailable"


async def test_only_the_overdue_request_is_cut(settings: Settings, postgres_url: str) -> None:
    """One sweeper keeps every request's deadline: while logins hang on a locked table past
    theirs, requests that started beside them answer as usual, and none of them is cancelled."""
    app = create_app(settings.model_copy(update={"request_timeout": DEADLINE}))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await register(client)).status_code == 201

        async def steady() -> list[int]:
            statuses = []
            for _ in range(20):  # spread over the hung logins' whole deadline
                statuses.append((await client.get("/")).status_code)
                await asyncio.sleep(DEADLINE / 10)
            return statuses

        async with _users_locked(postgres_url) as locker:
            hung, fast = await asyncio.wait_for(
                asyncio.gather(asyncio.gather(*(login(client) for _ in range(2))), steady()),
                BOUND * 3,
            )
        await locker.close()
        assert [r.status_code for r in hung] == [503, 503]
        assert fast == [200] * 20
        assert (await login(client)).status_code == 200  # the sweeper still runs


async def test_redis_replies_are_timed_by_redis_socket_timeout(settings: Settings) -> None:
    """A Redis that accepts and never answers: each command gives up after REDIS_SOCKET_TIMEOUT
    (kept by the cache itself, not redis-py), well inside the request's deadline, as a cache
    timeout; the next request meets the same, on a fresh connection."""
    changes = {"redis_socket_timeout": 0.3, "request_timeout": 30}
    async with _app_beside_a_hung_server(settings, changes, "cache") as client:
        with structlog.testing.capture_logs() as logs:
            for _ in range(2):
                started = time.monotonic()
                response = await asyncio.wait_for(login(client), BOUND * 3)
                assert response.status_code == 503
                assert time.monotonic() - started < BOUND  # not the 30 s deadline
        assert not [line for line in logs if line["event"] == "request_deadline_exceeded"]
        samples = parse(await (await client.get("/metrics")).get_data(as_text=True))
        cause = {"dependency": "cache", "reason": "timeout"}
        assert value(samples, "dependency_errors_total", **cause) >= 2


async def test_a_pooled_connection_that_hangs_is_answered_first_and_closed_after(
    settings: Settings, postgres_url: str
) -> None:
    """A connection already in the pool stops answering mid-query (the path to PostgreSQL goes
    dark). The request answers 503 `dependency_timeout` at its deadline while the connection is
    still being closed: SQLAlchemy's graceful close (cancel the statement, say goodbye, wait for
    the server) ran in the request's time, and the 503 came 2 s past REQUEST_TIMEOUT. The close
    is bounded (DB_CONNECT_TIMEOUT here, 60 s, so that the order shows whatever the machine's
    load) and ends with the dark path; the pool is whole for the next request."""
    target = make_url(postgres_url)
    proxy = TcpProxy(target.port or 5432)
    await proxy.start()
    via_proxy = target.set(port=proxy.port).render_as_string(hide_password=False)
    update = {
        "database_url": SecretStr(via_proxy),
        "request_timeout": DEADLINE,
        "db_connect_timeout": 60,
        "db_statement_timeout": 60,
        "health_refresh_seconds": 0,
    }
    app = create_app(settings.model_copy(update=update))
    database = app.parts.database
    try:
        async with app.test_app() as test_app:
            client = test_app.test_client()
            assert (await register(client)).status_code == 201  # a connection in the pool
            # The start-up purge of expired sessions runs on the pool too: done before the hang,
            # or its statement would be the one left hanging.
            await until(
                lambda: database.engine.sync_engine.pool.checkedout() == 0,
                BOUND,
                "the pool stays busy",
            )
            pooled = proxy.hang()
            assert pooled >= 1
            with structlog.testing.capture_logs() as logs:
                answer = await asyncio.wait_for(login(client), BOUND)
            # Answered while the dark connection is still open, its close under way.
            assert proxy.open_since_hang == pooled
            assert answer.status_code == 503
            assert (await answer.get_json())["error"]["code"] == "dependency_timeout"
            late = [line for line in logs if line["event"] == "request_deadline_exceeded"]
            assert [line["waiting_on"] for line in late] == ["database"]
            assert database.engine.sync_engine.pool.checkedout() == 0
            await proxy.cut()  # the dark path resets: the close ends
            proxy.hung = False
            await proxy.start()
            assert (await login(client)).status_code == 200
    finally:
        await proxy.cut()
