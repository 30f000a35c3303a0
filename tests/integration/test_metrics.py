"""`/metrics` on the real app over real PostgreSQL + Redis and the embedded default."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from quart import Quart

from service.app import create_app
from service.settings import Settings
from tests.support.client import Client, login, register
from tests.support.metrics_helpers import Samples, parse, value
from tests.support.server import free_port
from tests.support.waiting import until


async def _scrape(client: Client) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return await response.get_data(as_text=True)  # type: ignore[no-any-return]


async def test_active_users_is_global_across_instances(settings: Settings) -> None:
    first, second = create_app(settings), create_app(settings)
    async with first.test_app() as app_a, second.test_app() as app_b:
        client_a, client_b = app_a.test_client(), app_b.test_client()
        await register(client_a, "cat")
        await register(client_a, "dan")
        await login(client_a, "cat")
        await login(client_b, "dan")
        await client_a.get("/api/auth/me")
        await client_b.get("/api/auth/me")
        for client in (client_a, client_b):
            assert value(parse(await _scrape(client)), "active_users") == 2


@pytest.mark.parametrize("dependency", ["database", "cache"])
async def test_a_dependency_that_refuses_is_counted_with_its_cause(
    settings: Settings, dependency: str
) -> None:
    closed = free_port()  # nothing listens there: connections are refused
    setting = "database_url" if dependency == "database" else "redis_url"
    url = (
        f"postgresql+asyncpg://x@127.0.0.1:{closed}/x"
        if dependency == "database"
        else f"redis://127.0.0.1:{closed}/0"
    )
    app = create_app(
        settings.model_copy(update={setting: SecretStr(url), "health_refresh_seconds": 0})
    )
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await login(client)).status_code == 503
        samples = parse(await (await client.get("/metrics")).get_data(as_text=True))
    refused = {"dependency": dependency, "reason": "refused"}
    assert value(samples, "dependency_errors_total", **refused) >= 1
    others = [
        key
        for key, count in samples.items()
        if key[0] == "dependency_errors_total" and count and key[1] != frozenset(refused.items())
    ]
    assert others == []


async def test_saturation_signals(app: Quart, client: Client, settings: Settings) -> None:
    async def scrape() -> Samples:
        return parse(await (await client.get("/metrics")).get_data(as_text=True))

    async def lag_sampled_twice() -> bool:
        return value(await scrape(), "event_loop_lag_seconds_count") >= 2

    await until(lag_sampled_twice, 30, "the event loop's lag was never sampled twice")
    samples = await scrape()
    pool_max = settings.db_pool_size + settings.db_max_overflow
    assert value(samples, "db_pool_max_connections") == pool_max
    assert value(samples, "event_loop_lag_seconds_count") >= 2
    assert value(samples, "app_workers") == 1
    assert value(samples, "app_worker_starts_total", reason="start") == 1
    assert value(samples, "app_worker_starts_total", reason="replace") == 0
    assert value(samples, "process_max_fds") > value(samples, "process_open_fds") > 0
    python = [labels for name, labels in samples if name == "python_info"]
    assert [dict(labels)["major"] for labels in python] == ["3"]
    for generation in ("0", "1", "2"):
        assert ("python_gc_collections_total", frozenset({("generation", generation)})) in samples
