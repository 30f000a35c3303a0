"""The test tiers, and the fixtures every tier shares.

A test's tier is the folder it sits in, given to it as a marker at collection (`-m unit`):
- `tests/unit`: in process, no service, no tool, no other process; a unit test that opens a
  connection or starts a process fails. A test here that takes `backend` runs twice: on the
  embedded default (unit) and on PostgreSQL and Redis (that run is `integration`).
- `tests/integration`: real PostgreSQL and Redis, in process.
- `tests/system`: real servers and the tools: Prometheus, Alertmanager, Chromium, HAProxy, Node.js.
A missing service or tool skips its tests locally and fails them in CI (`tests/support/tools.py`).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import redis.asyncio as aioredis
from argon2 import PasswordHasher
from quart import Quart

from service.app import create_app
from service.auth import passwords
from service.settings import Settings
from tests.support.backends import (
    PG_ADMIN_URL,
    REDIS_URL,
    make_settings,
    new_database,
    run_alembic,
    truncate,
)
from tests.support.client import Client
from tests.support.tools import MISSING_PREFIX, require_services

# Property tests try the same examples every run, so that a run's outcome is the code's, not
# the draw's; `HYPOTHESIS_PROFILE=explore` draws new ones (then derandomize, to keep a find).
hypothesis.settings.register_profile("repeatable", derandomize=True, database=None)
hypothesis.settings.register_profile("explore", max_examples=2000)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

TESTS = Path(__file__).parent
TIERS = ("unit", "integration", "system")
BACKENDS = ["postgres", "embedded"]
_POSTGRES = ("PostgreSQL", PG_ADMIN_URL, "start it, or set TEST_POSTGRES_URL")
_REDIS = ("Redis", REDIS_URL, "start it, or set TEST_REDIS_URL")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(marker.name in TIERS for marker in item.iter_markers()):
            raise pytest.UsageError(f"{item.nodeid}: the folder gives a test its tier, not a mark")
        item.add_marker(_tier(item))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line per missing tool or service, however many tests it skipped."""
    reasons = Counter(
        str(report.longrepr[2]).removeprefix("Skipped: ").removeprefix(MISSING_PREFIX)
        for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report.longrepr, tuple) and MISSING_PREFIX in str(report.longrepr[2])
    )
    for reason, count in sorted(reasons.items()):
        terminalreporter.write_line(f"skipped {count} test(s): {reason}", yellow=True)


def _tier(item: pytest.Item) -> str:
    folder = item.path.relative_to(TESTS).parts[0]
    if folder not in TIERS:
        raise pytest.UsageError(f"{item.nodeid}: a test sits in tests/unit, integration or system")
    callspec = getattr(item, "callspec", None)
    if folder == "unit" and callspec is not None and callspec.params.get("backend") == "postgres":
        return "integration"
    return folder


class TierViolation(Exception):
    """A unit test reached outside its process."""


_REFUSED = pytest.StashKey[list[str]]()
_UNDO = pytest.StashKey[pytest.MonkeyPatch]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """A unit test, its fixtures of every scope included, opens no connection and starts no
    process: each attempt raises, and is recorded so that the test fails even where the code
    under test caught the error and carried on."""
    if item.get_closest_marker("unit") is not None:
        refused = item.stash[_REFUSED] = []
        item.stash[_UNDO] = _refuse_outside_calls(refused)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    result = yield
    refused = item.stash.get(_REFUSED, [])
    assert not refused, f"a unit test reached outside its process: {refused}"
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    # Before teardown: the last test of a run also finalizes the session's fixtures (the run's
    # database is dropped then), whatever its tier.
    if _UNDO in item.stash:
        item.stash[_UNDO].undo()
    return (yield)


@pytest.fixture
def refused_calls(request: pytest.FixtureRequest) -> list[str]:
    """What the unit tier refused this test so far (a test of the policy clears it)."""
    return request.node.stash[_REFUSED]


def _refuse_outside_calls(refused: list[str]) -> pytest.MonkeyPatch:
    def refuse(what: str) -> None:
        refused.append(what)
        raise TierViolation(
            f"a unit test {what}: move it to tests/integration or tests/system (CONTRIBUTING.md)"
        )

    def connect(sock: socket.socket, address: Any) -> None:
        refuse(f"connects to {address}")

    def popen(self: subprocess.Popen[Any], args: Any, *rest: Any, **options: Any) -> None:
        refuse(f"starts {args!r}")

    patch = pytest.MonkeyPatch()
    patch.setattr(socket.socket, "connect", connect)
    patch.setattr(socket.socket, "connect_ex", connect)
    patch.setattr(subprocess.Popen, "__init__", popen)
    return patch


@pytest.fixture(autouse=True)
def _cheap_password_hashes(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """argon2 at its lowest cost in process, where a test is not about the cost: the production
    parameters (64 MiB, 3 passes) make a register or login cost ~0.1 s of CPU. Tests marked
    `production_hashes` keep them, as every real server of the system tier does."""
    if request.node.get_closest_marker("production_hashes") is None:
        cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        monkeypatch.setattr(passwords, "_hasher", cheap)
    passwords._dummy_hash.cache_clear()
    yield
    passwords._dummy_hash.cache_clear()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for this run (for each worker under xdist), migrated by
    `alembic upgrade head`. Its tests run the production pair, so Redis must answer too."""
    require_services(_POSTGRES, _REDIS)
    with new_database("run") as url:
        run_alembic(url, "upgrade", "head")
        yield url


@pytest.fixture(autouse=True)
async def _empty_tables(request: pytest.FixtureRequest) -> None:
    """A test that takes the run's database starts with no users and no sessions (those that take
    `settings` are emptied there)."""
    if "postgres_url" in request.fixturenames:
        await truncate(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def redis_url() -> str:
    require_services(_REDIS)
    return REDIS_URL


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A PostgreSQL database that was never migrated (Redis must answer too, as above)."""
    require_services(_POSTGRES, _REDIS)
    with new_database("empty") as url:
        yield url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
async def settings(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Settings]:
    postgres = None
    if backend == "postgres":
        postgres = request.getfixturevalue("postgres_url")
        await truncate(postgres)
    settings = make_settings(backend, postgres, tmp_path)
    yield settings
    if postgres is not None:
        # Everything the service writes to Redis expires: nothing piles up in a shared instance.
        assert await _keys_without_ttl(settings.cache_key_prefix) == []


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Quart]:
    application = create_app(settings)
    async with application.test_app() as test_app:
        yield test_app.app  # type: ignore[attr-defined]


@pytest.fixture
def client(app: Quart) -> Client:
    return app.test_client()


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
