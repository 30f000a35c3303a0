"""Fixtures: real PostgreSQL and Redis (a fresh database per test run, migrated by alembic),
and the embedded default (SQLite in a temporary directory, in-process cache)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from quart import Quart
from quart.typing import TestClientProtocol as Client
from sqlalchemy.engine import make_url

from service.app import create_app
from service.sessions import SESSION_COOKIE_NAME
from service.settings import Settings, load_settings
from tests.support import ROOT

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BACKENDS = ["postgres", "embedded"]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for this run, created empty and migrated by `alembic upgrade head`."""
    name = f"scene_packer_test_{uuid.uuid4().hex[:12]}"
    _in_thread(_admin(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+asyncpg", database=name)
    url_text = url.render_as_string(hide_password=False)
    try:
        run_alembic(url_text, "upgrade", "head")
        yield url_text
    finally:
        _in_thread(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run_alembic(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )


def make_settings(backend: str, postgres_url: str | None, data_dir: Path, **extra: Any) -> Settings:
    if backend == "postgres":
        assert postgres_url is not None
        backing: dict[str, Any] = {
            "database_url": postgres_url,
            "redis_url": REDIS_URL,
            "cache_key_prefix": f"test-{uuid.uuid4().hex[:8]}:",
        }
    else:
        backing = {"database_url": "", "redis_url": ""}
    return load_settings(**{"data_dir": data_dir, "environment": "development", **backing, **extra})


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
async def settings(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Settings]:
    postgres = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    if postgres is not None:
        await _truncate(postgres)
    settings = make_settings(backend, postgres, tmp_path)
    yield settings
    if postgres is not None:
        # Everything the service writes to Redis expires: nothing piles up in a shared instance.
        assert await _keys_without_ttl(settings.cache_key_prefix) == []


async def _keys_without_ttl(prefix: str) -> list[str]:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        return [
            key.decode()
            async for key in client.scan_iter(match=f"{prefix}*")
            if await client.pttl(key) == -1
        ]
    finally:
        await client.aclose()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Quart]:
    application = create_app(settings)
    async with application.test_app() as test_app:
        yield test_app.app  # type: ignore[attr-defined]


@pytest.fixture
def client(app: Quart) -> Client:
    return app.test_client()


async def register(
    client: Client, username: str = "alice", password: str = "correct horse battery"
) -> Any:
    return await client.post(
        "/api/auth/register", json={"username": username, "password": password}
    )


async def login(
    client: Client, username: str = "alice", password: str = "correct horse battery"
) -> Any:
    return await client.post("/api/auth/login", json={"username": username, "password": password})


def set_cookie(response: Any, name: str) -> str:
    """The one `Set-Cookie` header of a response for cookie `name` (a login sets two)."""
    (header,) = [
        header for header in response.headers.getlist("Set-Cookie") if header.startswith(name + "=")
    ]
    return str(header)


def session_cookie(response: Any) -> str:
    """`name=value` of the session cookie a response sets."""
    return set_cookie(response, SESSION_COOKIE_NAME).split(";", 1)[0]


def _in_thread(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run set-up SQL on its own loop: fixtures may be called while a test's loop is running."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coroutine).result()


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def in_database(database: str | None, sql: str) -> None:
    """Run `sql` as the admin user in one database of the server."""
    dsn = make_url(PG_ADMIN_URL).set(database=database).render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def _truncate(url: str) -> None:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("TRUNCATE users, sessions RESTART IDENTITY")
    finally:
        await connection.close()
