"""`/metrics` on the real app over real PostgreSQL + Redis and the embedded default."""

from __future__ import annotations

import asyncio
import random
import socket
import string
import time
from pathlib import Path

import httpx
import pytest
import structlog
from aioprometheus.collectors import Histogram
from pydantic import SecretStr
from quart import Quart

from service.app import create_app
from service.observability import exposition
from service.observability.metrics import HTTP_DURATION_BUCKETS, Metrics
from service.settings import Settings, load_settings
from tests.conftest import Client, login, register
from tests.support.metrics_helpers import parse, promtool_check, value
from tests.support.server import free_port, running_server


async def _scrape(client: Client) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return await response.get_data(as_text=True)  # type: ignore[no-any-return]


async def test_request_counts_and_histogram_are_exact(client: Client) -> None:
    for _ in range(25):
        assert (await client.get("/")).status_code == 200
    for _ in range(3):
        await client.get("/api/auth/me")
    samples = parse(await _scrape(client))
    assert value(samples, "http_requests_total", method="GET", endpoint="/", status="200") == 25
    assert (
        value(samples, "http_requests_total", method="GET", endpoint="/api/auth/me", status="401")
        == 3
    )
    labels = {"method": "GET", "endpoint": "/"}
    assert value(samples, "http_request_duration_seconds_count", **labels) == 25
    assert value(samples, "http_request_duration_seconds_sum", **labels) > 0
    buckets = sorted(
        (float(dict(key[1])["le"]), v)
        for key, v in samples.items()
        if key[0] == "http_request_duration_seconds_bucket" and dict(key[1])["endpoint"] == "/"
    )
    bounds = [bound for bound, _ in buckets]
    assert {0.005, 1.0, 2.0, 10.0} <= set(bounds)
    counts = [count for _, count in buckets]
    assert counts == sorted(counts) and counts[-1] == 25
    assert value(samples, "http_requests_in_progress", method="GET") == 0


def test_fast_histogram_path_counts_like_aioprometheus() -> None:
    """The request path's histogram (Series + BucketCounts) against aioprometheus's own
    `observe` on the same values, bounds themselves included (buckets are "less or equal")."""
    values = [*HTTP_DURATION_BUCKETS, 0.0, 0.0049, 0.0051, 0.3, 7.5, 11.0, 1e9]
    values += [random.Random(3).uniform(0, 12) for _ in range(500)]
    fast = Metrics(load_settings())
    reference = Histogram("reference", "", buckets=HTTP_DURATION_BUCKETS)
    for observed in values:
        fast.request_finished("GET", "/", 200, observed)
        reference.observe({"method": "GET", "endpoint": "/"}, observed)
    ours = fast.http_duration.get({"method": "GET", "endpoint": "/"})
    theirs = reference.get({"method": "GET", "endpoint": "/"})
    assert ours == theirs
    assert ours["count"] == len(values) and ours[float("inf")] == len(values)


async def test_metrics_and_probes_are_not_counted_by_default(client: Client) -> None:
    await _scrape(client)
    samples = parse(await _scrape(client))
    assert not [key for key in samples if dict(key[1]).get("endpoint") == "/metrics"]


async def test_random_unknown_paths_add_no_series(client: Client) -> None:
    await client.get("/warm-up/unknown")
    await client.open("/", method="PROPFIND")
    before = parse(await _scrape(client))
    rng = random.Random(7)
    for _ in range(2000):
        path = "/" + "".join(rng.choices(string.ascii_letters + string.digits, k=12))
        await client.get(path)
    after = parse(await _scrape(client))
    request_series = {k for k in after if k[0].startswith("http_request")}
    assert request_series == {k for k in before if k[0].startswith("http_request")}
    assert (
        value(after, "http_requests_total", method="GET", endpoint="<unmatched>", status="404")
        == 2001
    )
    # A method a route refuses counts under the route (it is no unknown path).
    assert value(after, "http_requests_total", method="OTHER", endpoint="/", status="405") == 1


async def test_a_refused_method_counts_under_its_route(client: Client) -> None:
    assert (await client.put("/api/auth/me")).status_code == 405
    assert (await client.delete("/api/auth/login")).status_code == 405
    samples = parse(await _scrape(client))
    for method, endpoint in (("PUT", "/api/auth/me"), ("DELETE", "/api/auth/login")):
        assert value(samples, "http_requests_total", method=method, endpoint=endpoint, status="405")
    assert not value(
        samples, "http_requests_total", method="PUT", endpoint="<unmatched>", status="405"
    )


def test_hostile_path_over_real_http_leaves_exposition_parseable(tmp_path: Path) -> None:
    with running_server(tmp_path, {}) as server, httpx.Client(base_url=server.base_url) as client:
        raw = client.get("/x%22y%0Az")
        assert raw.status_code == 404
        client.get("/x%22y%0Az%5C")
        text = client.get("/metrics").text
    samples = parse(text)
    assert (
        value(samples, "http_requests_total", method="GET", endpoint="<unmatched>", status="404")
        == 2
    )
    result = promtool_check(text)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result


def test_label_values_are_escaped_whatever_they_hold(tmp_path: Path) -> None:
    metrics = Metrics(load_settings(data_dir=tmp_path))
    hostile = 'a"b\nc\\d}{e="f"'
    metrics.http_requests.inc({"method": "GET", "endpoint": hostile, "status": "200"})
    text = exposition.render(metrics.snapshot()).decode()
    samples = parse(text)
    assert value(samples, "http_requests_total", method="GET", endpoint=hostile, status="200") == 1
    assert promtool_check(text).returncode == 0


async def test_promtool_accepts_the_full_exposition(client: Client) -> None:
    await register(client)
    await login(client)
    await client.get("/api/auth/me")
    text = await _scrape(client)
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "" and result.stderr == ""


async def test_db_and_cache_metrics_move_with_auth_traffic(client: Client) -> None:
    before = parse(await _scrape(client))
    await register(client)
    await login(client)
    await client.get("/api/auth/me")  # miss, then stored
    await client.get("/api/auth/me")  # hit
    after = parse(await _scrape(client))
    for operation in ("INSERT", "SELECT", "UPDATE"):
        grew = value(after, "db_queries_total", operation=operation) - value(
            before, "db_queries_total", operation=operation
        )
        assert grew >= 1, operation
        assert value(after, "db_query_duration_seconds_count", operation=operation) >= 1
    assert value(after, "cache_requests_total", operation="get", result="hit") >= 1
    assert value(after, "cache_requests_total", operation="get", result="miss") >= 1
    assert value(after, "db_pool_connections", state="in_use") == 0
    assert value(after, "db_pool_connections", state="idle") >= 1
    assert value(after, "process_resident_memory_bytes") > 0
    assert value(after, "process_start_time_seconds") > 0
    assert value(after, "process_open_fds") > 0
    assert value(after, "app_info", version=_version(after), environment="development") == 1


def _version(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> str:
    return next(dict(k[1])["version"] for k in samples if k[0] == "app_info")


async def test_active_users_counts_a_logged_in_user(client: Client) -> None:
    await register(client, "ann")
    await register(client, "ben")
    await login(client, "ann")
    await client.get("/api/auth/me")
    samples = parse(await _scrape(client))
    assert value(samples, "active_users") == 1


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
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


async def test_429_bumps_rate_limited_requests(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"login_limit_per_username": 1}))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await login(client, "zed", "wrong password")
        assert (await login(client, "zed", "wrong password")).status_code == 429
        samples = parse(await _scrape(client))
    assert value(samples, "rate_limited_requests_total", endpoint="/api/auth/login") == 1


async def test_unhandled_exceptions_are_counted_by_bounded_class(settings: Settings) -> None:
    class SurpriseFromAPlugin(Exception):
        pass

    app: Quart = create_app(settings)

    @app.get("/boom/<kind>")
    async def boom(kind: str) -> str:
        if kind == "runtime":
            raise RuntimeError("x")
        raise SurpriseFromAPlugin("y")

    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.get("/boom/runtime")).status_code == 500
        assert (await client.get("/boom/custom")).status_code == 500
        samples = parse(await _scrape(client))
    assert value(samples, "app_errors_total", type="RuntimeError") == 1
    assert value(samples, "app_errors_total", type="other") == 1
    assert (
        value(samples, "http_requests_total", method="GET", endpoint="/boom/<kind>", status="500")
        == 2
    )


async def test_metrics_token_is_required_when_set(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"metrics_token": _secret("s3cret-token")}))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        with structlog.testing.capture_logs() as events:
            assert (await client.get("/metrics")).status_code == 401
            assert (await client.get("/metrics")).status_code == 401
        # Refused scrapes are logged, at most once a minute per worker.
        refused = [e for e in events if e["event"] == "metrics_scrape_refused"]
        assert [(e["reason"], e["refused"]) for e in refused] == [("missing_token", 1)]
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
        right = await client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
        assert right.status_code == 200


def _secret(text: str) -> object:
    from pydantic import SecretStr

    return SecretStr(text)


async def test_request_observability_can_be_turned_off(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"request_observability": False}))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        response = await client.get("/")
        assert response.status_code == 200
        assert "X-Request-ID" not in response.headers
        samples = parse(await _scrape(client))
    assert not [key for key in samples if key[0] == "http_requests_total"]
    assert value(samples, "app_info", version=_version(samples), environment="development") == 1


def test_a_gauge_without_a_merge_mode_is_refused() -> None:
    from aioprometheus.collectors import Gauge, Registry

    registry = Registry()
    Gauge("declared_carelessly", "No merge mode.", registry=registry).set({}, 1)
    with pytest.raises(ValueError, match="declared_carelessly"):
        exposition.snapshot(registry, {})
    assert (
        exposition.snapshot(registry, {"declared_carelessly": "max"})["declared_carelessly"].merge
        == "max"
    )


CUT = {"method": "POST", "endpoint": "/api/rum", "status": "499"}


def test_a_client_that_goes_away_is_not_a_server_error(tmp_path: Path) -> None:
    """A body cut short (declared 100 bytes, 3 sent, then the connection closed): 499, never 500,
    so a client cannot feed the 5xx alerts."""
    with running_server(tmp_path, {}) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        for _ in range(5):
            with socket.create_connection((host, int(port)), timeout=10) as connection:
                connection.sendall(
                    b"POST /api/rum HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b'Content-Length: 100\r\n\r\n{"a'
                )
        samples: dict[object, float] = {}
        for _ in range(50):  # the server sees each disconnect a moment later
            samples = parse(httpx.get(server.base_url + "/metrics").text)
            if (
                value(
                    samples, "http_requests_total", method="POST", endpoint="/api/rum", status="499"
                )
                == 5
            ):
                break
            time.sleep(0.1)
    answered = {
        dict(labels)["status"]
        for (name, labels), _ in samples.items()
        if name == "http_requests_total" and dict(labels).get("endpoint") == "/api/rum"
    }
    assert answered == {"499"}
    assert (
        value(samples, "http_requests_total", method="POST", endpoint="/api/rum", status="499") == 5
    )


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_error_counters_are_exported_at_zero_from_the_start(client: Client) -> None:
    """So rate() sees the first failure of a process and a panel shows 0, not "No data"."""
    samples = parse(await (await client.get("/metrics")).get_data(as_text=True))
    zeros = {
        ("db_query_errors_total", ()),
        ("cache_errors_total", ()),
        ("app_errors_total", (("type", "RuntimeError"),)),
        ("app_errors_total", (("type", "other"),)),
        ("rate_limited_requests_total", (("endpoint", "/api/auth/login"),)),
        ("rate_limited_requests_total", (("endpoint", "/api/auth/register"),)),
        ("frontend_beacons_rejected_total", (("reason", "malformed"),)),
        ("frontend_beacons_rejected_total", (("reason", "rate_limited"),)),
    }
    for name, labels in zeros:
        assert (name, frozenset(labels)) in samples, (name, labels)
        assert value(samples, name, **dict(labels)) == 0
    rate_limited = {
        dict(k[1])["endpoint"] for k in samples if k[0] == "rate_limited_requests_total"
    }
    assert rate_limited == {"/api/auth/login", "/api/auth/register"}


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
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


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_saturation_signals(app: Quart, client: Client, settings: Settings) -> None:
    await asyncio.sleep(1.2)  # two samples of the event loop's lag
    samples = parse(await (await client.get("/metrics")).get_data(as_text=True))
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
