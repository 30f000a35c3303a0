"""The real backends of the integration and system tiers: PostgreSQL (an admin DSN that may create
databases) and Redis, both settable from the environment, and databases made for one test.

`TEST_POSTGRES_URL`, `TEST_REDIS_URL` and `TEST_DATABASE_PREFIX` point the tests elsewhere, so that
two checkouts, or a PostgreSQL shared with others, run side by side (docs/testing.md).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.backends.db.models import LoginSession
from service.settings import Settings, load_settings
from tests.support import ROOT

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_PREFIX = os.environ.get("TEST_DATABASE_PREFIX", "scene_packer_test_")
if not re.fullmatch(r"[a-z_][a-z0-9_]{0,39}", DATABASE_PREFIX):
    raise ValueError(
        f"TEST_DATABASE_PREFIX={DATABASE_PREFIX!r}: use up to 40 lower-case letters, digits and _"
    )


@contextmanager
def new_database(purpose: str) -> Iterator[str]:
    """An empty PostgreSQL database named `<TEST_DATABASE_PREFIX><purpose>_<random>`, dropped
    afterwards; yields its URL for the service (postgresql+asyncpg)."""
    name = f"{DATABASE_PREFIX}{purpose}_{uuid.uuid4().hex[:10]}"
    admin(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+asyncpg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
    """Settings for an in-process app: PostgreSQL and Redis (under a key prefix of its own), or the
    embedded default (SQLite in `data_dir`, the in-process cache)."""
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


def admin(sql: str, database: str | None = None) -> None:
    """`in_database`, from code that may be inside a running loop (a loop of its own)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, in_database(database, sql)).result()


async def in_database(database: str | None, sql: str) -> None:
    """Run `sql` as the admin user in one database of the server (None: the admin DSN's own)."""
    url = make_url(PG_ADMIN_URL)
    if database is not None:
        url = url.set(database=database)
    connection = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def truncate(url: str) -> None:
    """Empty the service's tables in the database at `url`, for a test of its own."""
    await in_database(make_url(url).database, "TRUNCATE users, sessions RESTART IDENTITY")


async def session_rows(engine: AsyncEngine) -> int:
    """How many sessions the database holds, read on the test's own connection."""
    async with engine.connect() as connection:
        return int((await connection.execute(select(func.count(LoginSession.id)))).scalar_one())
