"""Health checks against real services and real faults (closed ports, hung servers, cut links)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from service.app import create_app
from service.settings import Settings
from tests.support.backends import PG_ADMIN_URL, REDIS_URL, make_settings, run_alembic
from tests.support.client import Client, login, register
from tests.support.faults import HungServer, TcpProxy
from tests.support.metrics_helpers import parse, value

HANG_GUARD = 30  # seconds: only catches a hang; never a performance assertion


def _with(settings: Settings, **changes: Any) -> Settings:
    base = {"health_refresh_seconds": 0, "health_cache_ttl": 0}
    return settings.model_copy(update={**base, **changes})


def _pg_via(port: int, postgres_url: str) -> SecretStr:
    url = make_url(postgres_url).set(host="127.0.0.1", port=port)
    return SecretStr(url.render_as_string(hide_password=False))


async def _health(client: Client, path: str = "/api/health") -> tuple[int, dict[str, Any]]:
    response = await asyncio.wait_for(client.get(path), HANG_GUARD)
    assert response.headers["Cache-Control"] == "no-store"
    return response.status_code, await response.get_json()


def _assert_no_internals(body: object) -> None:
    text = str(body)
    for leak in (
        "127.0.0.1",
        "Errno",
        "Connect call",
        "Traceback",
        "postgresql",
        "redis:",
        "Error",
    ):
        assert leak not in text, leak


async def test_database_unreachable(settings: Settings) -> None:
    app = create_app(
        _with(settings, database_url=SecretStr("postgresql+asyncpg://x@127.0.0.1:1/x"))
    )
    async with app.test_app() as test_app:
        client = test_app.test_client()
        status, body = await _health(client)
        assert status == 503
        assert body["status"] == "degraded"
        assert body["services"]["database"] == "unhealthy"
        assert body["checks"]["database"]["reason"] == "connection_refused"
        assert body["services"]["cache"] == "healthy"
        _assert_no_internals(body)
        assert (await _health(client, "/api/health/ready"))[0] == 503
        assert (await _health(client, "/api/health/live"))[0] == 200
        for response in (await register(client), await login(client)):
            assert response.status_code == 503
            error = (await response.get_json())["error"]
            assert error["code"] == "service_unavailable"
            _assert_no_internals(error)


async def test_cache_unreachable(settings: Settings) -> None:
    app = create_app(_with(settings, redis_url=SecretStr("redis://127.0.0.1:1/0")))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        status, body = await _health(client)
        assert status == 503
        assert body["services"]["cache"] == "unhealthy"
        assert body["checks"]["cache"]["reason"] == "connection_refused"
        assert body["services"]["database"] == "healthy"
        _assert_no_internals(body)
        assert (await _health(client, "/api/health/live"))[0] == 200
        response = await login(client)
        assert response.status_code == 503
        samples = parse(await (await client.get("/metrics")).get_data(as_text=True))
        assert value(samples, "cache_errors_total") >= 1
        assert value(samples, "health_check_status", check="cache") == 0


@pytest.mark.parametrize("dependency", ["database", "cache"])
async def test_hung_dependency_answers_within_the_deadline(
    settings: Settings, dependency: str
) -> None:
    hung = HungServer()
    await hung.start()
    # Client timeouts far beyond the check's: only the health check's own timeout can answer.
    if dependency == "database":
        url = f"postgresql+asyncpg://x@127.0.0.1:{hung.port}/x"
        changes: dict[str, Any] = {"database_url": SecretStr(url), "db_connect_timeout": 60}
    else:
        url = f"redis://127.0.0.1:{hung.port}/0"
        changes = {"redis_url": SecretStr(url), "redis_socket_timeout": 60}
    app = create_app(_with(settings, health_check_timeout=0.3, **changes))
    try:
        async with app.test_app() as test_app:
            client = test_app.test_client()
            status, body = await _health(client)
            assert status == 503
            assert body["checks"][dependency]["status"] == "unhealthy"
            assert body["checks"][dependency]["reason"] == "timeout"
            other = "cache" if dependency == "database" else "database"
            assert body["checks"][other]["status"] == "healthy"
    finally:
        await hung.stop()


async def test_single_flight_under_200_concurrent_polls(settings: Settings) -> None:
    # A generous check timeout: this is about one run shared by 200 polls, and on a busy machine
    # the default half second can pass while they are being created (a CI run failed so).
    app = create_app(_with(settings, health_cache_ttl=60, health_check_timeout=10))
    async with app.test_app() as test_app:
        client = test_app.test_client()

        async def probes() -> float:
            text = await (await client.get("/metrics")).get_data(as_text=True)
            return value(parse(text), "health_check_duration_seconds_count", check="database")

        before = await probes()
        responses = await asyncio.wait_for(
            asyncio.gather(*(client.get("/api/health") for _ in range(200))), HANG_GUARD
        )
        assert {response.status_code for response in responses} == {200}
        timestamps = {(await response.get_json())["timestamp"] for response in responses}
        assert len(timestamps) == 1
        assert await probes() - before == 1


async def test_recovery_after_the_database_and_cache_return(
    settings: Settings, postgres_url: str
) -> None:
    db_proxy, cache_proxy = (
        TcpProxy(make_url(PG_ADMIN_URL).port or 5432),
        TcpProxy(make_url(REDIS_URL).port or 6379),
    )
    await db_proxy.start()
    await cache_proxy.start()
    redis_via = f"redis://127.0.0.1:{cache_proxy.port}/0"
    changed = _with(
        settings, database_url=_pg_via(db_proxy.port, postgres_url), redis_url=SecretStr(redis_via)
    )
    app = create_app(changed)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await register(client, "rita")).status_code == 201
        assert (await _health(client))[0] == 200

        await db_proxy.cut()
        await cache_proxy.cut()
        status, body = await _health(client)
        assert status == 503
        assert body["services"]["database"] == "unhealthy"
        assert body["services"]["cache"] == "unhealthy"
        assert (await login(client, "rita")).status_code == 503

        await db_proxy.start()
        await cache_proxy.start()
        status, body = await _health(client)
        assert status == 200, body
        # The request pools recover too, without a restart.
        assert (await login(client, "rita")).status_code == 200
        assert (await client.get("/api/auth/me")).status_code == 200
    await db_proxy.cut()
    await cache_proxy.cut()


async def test_failure_is_logged_once_per_state_change(settings: Settings) -> None:
    app = create_app(_with(settings, redis_url=SecretStr("redis://127.0.0.1:1/0")))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        with structlog.testing.capture_logs() as events:
            for _ in range(5):
                await _health(client)
    failures = [e for e in events if e["event"] == "health_check_failed"]
    assert len(failures) == 1
    assert failures[0]["check"] == "cache"
    assert failures[0]["reason"] == "connection_refused"
    assert failures[0]["exc_info"]


@pytest.mark.parametrize("revision", [None, "0001"])
async def test_a_database_behind_the_code_is_not_ready(
    revision: str | None, empty_database: str, tmp_path: Path
) -> None:
    """Reachable but not migrated (or migrated to an older revision): every write would fail,
    so readiness says so, with the reason."""
    if revision is not None:
        run_alembic(empty_database, "upgrade", revision)
    app = create_app(make_settings("postgres", empty_database, tmp_path, health_cache_ttl=0))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        ready = await client.get("/api/health/ready")
        assert ready.status_code == 503
        assert (await ready.get_json())["reasons"] == {"database": "schema_outdated"}
        report = await (await client.get("/api/health")).get_json()
        assert report["checks"]["database"]["reason"] == "schema_outdated"
    run_alembic(empty_database, "upgrade", "head")
    app = create_app(make_settings("postgres", empty_database, tmp_path, health_cache_ttl=0))
    async with app.test_app() as test_app:
        assert (await test_app.test_client().get("/api/health/ready")).status_code == 200


async def test_after_a_write_failed_for_want_of_room_the_check_writes_to_postgresql(
    settings: Settings,
) -> None:
    """PostgreSQL's disk cannot be filled here; what can be checked is the other half: once the
    database layer has reported `disk_full`, the check's own write (a temporary table, dropped at
    commit) is accepted by a real PostgreSQL, the check passes, and it stops writing."""
    app = create_app(_with(settings))
    async with app.test_app():
        monitor = app.parts.health
        monitor.database_failed("disk_full")
        client = app.test_client()
        status, body = await _health(client)
        assert (status, body["checks"]["database"]["status"]) == (200, "healthy")
        assert monitor.cannot_write is False
