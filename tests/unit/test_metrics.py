"""`/metrics` on the real app over real PostgreSQL + Redis and the embedded default."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest
import structlog
from aioprometheus.collectors import Counter, Gauge, Histogram
from pydantic import SecretStr
from quart import Quart

from service.app import create_app
from service.observability import exposition
from service.observability.families import FAMILIES, HTTP_DURATION_BUCKETS
from service.observability.metrics import Metrics
from service.settings import Settings, load_settings
from tests.support.client import Client, login, register
from tests.support.metrics_helpers import parse, value


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
    await client.get("/")
    await client.get("/api/health/live")
    await _scrape(client)
    samples = parse(await _scrape(client))
    counted = {
        dict(labels).get("endpoint") for name, labels in samples if name == "http_requests_total"
    }
    assert counted == {"/"}  # the request to / is counted: the metrics are there


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


def test_a_label_set_outside_its_familys_declaration_fails_at_once(tmp_path: Path) -> None:
    """A typo in a label name would have made a new series that no dashboard reads."""
    metrics = Metrics(load_settings(data_dir=tmp_path))
    with pytest.raises(ValueError, match="dependency_errors_total"):
        metrics.dependency_errors.inc({"dependency": "database", "reasn": "timeout"})
    with pytest.raises(ValueError, match="health_check_status"):
        metrics.health_status.set({}, 1)  # a label left out
    with pytest.raises(ValueError, match="db_query_errors_total"):
        metrics.db_errors.inc({"operation": "SELECT"})  # a label the family does not have
    metrics.dependency_errors.inc({"dependency": "database", "reason": "timeout"})


def test_every_declared_family_is_exported_as_declared(tmp_path: Path) -> None:
    """FAMILIES is the one declaration: each row is an attribute of `Metrics` of its kind, the
    registry holds exactly those families, and each one's start-up series are there at 0."""
    metrics = Metrics(load_settings(data_dir=tmp_path))
    kinds = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
    for family in FAMILIES:
        collector = getattr(metrics, family.attribute)
        assert isinstance(collector, kinds[family.kind]), family.name
        assert collector.name == family.name
        assert Metrics.__annotations__[family.attribute] == kinds[family.kind].__name__
        for labels in family.zeros:
            assert collector.get(labels) == 0, (family.name, labels)
    assert sorted(c.name for c in metrics.registry.get_all()) == sorted(f.name for f in FAMILIES)
    assert len({f.attribute for f in FAMILIES}) == len(FAMILIES)
    assert all((f.merge is not None) == (f.kind == "gauge") for f in FAMILIES)
    assert all(bool(f.buckets) == (f.kind == "histogram") for f in FAMILIES)
