"""Health checks against real services and real faults (closed ports, hung servers, cut links)."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import structlog
from sqlalchemy.exc import OperationalError

from service.app import create_app
from service.health.checks import CheckResult, HealthReport, classify
from service.observability.context import add_request_context
from service.settings import Settings
from service.unavailable import failure_reason
from tests.support.client import Client
from tests.support.metrics_helpers import Samples, parse, value
from tests.support.waiting import until

HANG_GUARD = 30  # seconds: only catches a hang; never a performance assertion


def _with(settings: Settings, **changes: Any) -> Settings:
    base = {"health_refresh_seconds": 0, "health_cache_ttl": 0}
    return settings.model_copy(update={**base, **changes})


async def _health(client: Client, path: str = "/api/health") -> tuple[int, dict[str, Any]]:
    response = await asyncio.wait_for(client.get(path), HANG_GUARD)
    assert response.headers["Cache-Control"] == "no-store"
    return response.status_code, await response.get_json()


async def test_healthy_on_real_backends(client: Client) -> None:
    status, body = await _health(client)
    assert status == 200
    assert body["status"] == "healthy"
    assert body["services"]["database"] == "healthy"
    assert body["services"]["cache"] == "healthy"
    assert 0 <= body["services"]["disk"]["free_percent"] <= 100
    assert 0 <= body["services"]["memory"]["percent_used"] <= 100
    assert body["timestamp"].endswith("Z")
    assert set(body["checks"]) == {"database", "cache", "disk", "memory"}
    for check in body["checks"].values():
        assert check["status"] == "healthy" and check["duration_ms"] >= 0
    assert (await _health(client, "/api/health/ready"))[0] == 200
    assert (await _health(client, "/api/health/live"))[0] == 200


async def test_head_requests_are_answered(client: Client) -> None:
    for path in ("/api/health", "/api/health/live", "/api/health/ready"):
        response = await client.head(path)
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "no-store"


async def test_disk_and_memory_warn_without_degrading(settings: Settings) -> None:
    app = create_app(_with(settings, disk_warning_free_percent=100, memory_warning_percent=0.1))
    async with app.test_app() as test_app:
        status, body = await _health(test_app.test_client())
    assert status == 200
    assert body["status"] == "healthy"
    assert body["services"]["disk"]["status"] == "warning"
    assert body["services"]["memory"]["status"] == "warning"


async def test_critical_checks_are_a_setting(settings: Settings) -> None:
    app = create_app(
        _with(settings, memory_warning_percent=0.1, health_critical_checks=["database", "memory"])
    )
    async with app.test_app() as test_app:
        client = test_app.test_client()
        status, body = await _health(client)
        assert status == 503 and body["status"] == "degraded"
        assert (await _health(client, "/api/health/ready"))[0] == 503


async def test_health_metrics_and_background_refresh(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"health_refresh_seconds": 0.05}))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        samples: Samples = {}

        async def refreshed_twice() -> bool:
            nonlocal samples
            samples = parse(await (await client.get("/metrics")).get_data(as_text=True))
            return value(samples, "health_check_duration_seconds_count", check="database") >= 2

        await until(refreshed_twice, 30, "the refresher never ran twice")
    for check in ("database", "cache", "disk", "memory"):
        assert value(samples, "health_check_status", check=check) == 1
    assert value(samples, "health_check_duration_seconds_count", check="database") >= 2


async def test_probes_outside_the_edge_get_quarts_answers(client: Client) -> None:
    """The edge answers only GET and HEAD on the exact paths; the rest reaches the routes."""
    post = await client.post("/api/health/ready")
    assert post.status_code == 405
    error = (await post.get_json())["error"]
    assert error["code"] == "method_not_allowed" and error["request_id"]
    assert post.headers["X-Request-ID"] == error["request_id"]
    assert (await client.get("/api/health/nothing")).status_code == 404
    # Mounted under a root path, the app answers the same probes through its routes.
    for path in ("/api/health", "/api/health/live", "/api/health/ready"):
        edge = await client.get(path)
        routed = await client.get(f"/svc{path}", root_path="/svc")
        assert routed.status_code == edge.status_code == 200
        assert routed.headers["Cache-Control"] == "no-store"
        edge_body, routed_body = await edge.get_json(), await routed.get_json()
        for body in (edge_body, routed_body):
            body.pop("timestamp", None)
            for check in body.get("checks", {}).values():
                check.pop("duration_ms")
        assert routed_body == edge_body


async def test_probes_answer_when_the_apps_hooks_fail(settings: Settings) -> None:
    """A broken per-request hook takes the routed requests down, not the load balancer's view."""
    app = create_app(_with(settings))

    @app.before_request
    async def broken() -> None:
        raise RuntimeError("a hook that fails")

    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.get("/")).status_code == 500
        for path in ("/api/health", "/api/health/live", "/api/health/ready"):
            response = await client.get(path)
            assert response.status_code == 200, path
            assert response.headers["X-Request-ID"]


async def test_logged_probes_carry_their_route(settings: Settings) -> None:
    app = create_app(_with(settings, log_health_requests=True, metrics_track_probes=True))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        with structlog.testing.capture_logs(processors=[add_request_context]) as events:
            await client.get("/api/health/ready")
        (line,) = [e for e in events if e["event"] == "request_finished"]
        assert (line["status"], line["route"]) == (200, "/api/health/ready")
        samples = parse(await (await client.get("/metrics")).get_data(as_text=True))
    ready = {"endpoint": "/api/health/ready", "method": "GET", "status": "200"}
    assert value(samples, "http_requests_total", **ready) == 1


async def test_polls_are_not_logged_or_counted_by_default(client: Client) -> None:
    with structlog.testing.capture_logs(processors=[add_request_context]) as events:
        await client.get("/api/health")
        await client.get("/api/health/live")
        await client.get("/")
    finished = [e for e in events if e["event"] == "request_finished"]
    assert [e["route"] for e in finished] == ["/"]
    samples = parse(await (await client.get("/metrics")).get_data(as_text=True))
    assert not [k for k in samples if dict(k[1]).get("endpoint", "").startswith("/api/health")]
    assert value(samples, "http_requests_total", method="GET", endpoint="/", status="200") == 1


def test_a_full_disk_is_named_whichever_layer_reports_it() -> None:
    """SQLite's own SQLITE_FULL (caused for real: a database capped at two pages), as the driver
    raises it and as SQLAlchemy wraps it; PostgreSQL's disk_full (SQLSTATE 53100, which only a
    full server disk causes); and the file system's ENOSPC."""
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE t (x)")
    connection.execute("PRAGMA max_page_count = 2")
    with pytest.raises(sqlite3.OperationalError) as full:
        connection.execute("INSERT INTO t VALUES (randomblob(100000))")
    causes = [
        full.value,
        OperationalError("INSERT INTO t", {}, full.value),
        asyncpg.exceptions.DiskFullError("could not extend file"),
        OSError(errno.ENOSPC, "No space left on device"),
    ]
    assert [failure_reason(cause) for cause in causes] == ["disk_full"] * 4
    assert {classify(cause) for cause in causes} == {"disk_full"}
    assert failure_reason(OSError(errno.EIO, "Input/output error")) == "other"


def test_the_report_summarises_every_registered_check() -> None:
    """`services` comes from the checks that ran, not from four names written out: a new check
    shows up with its readings (declared with `reads`), a failed one keeps its shape."""
    report = HealthReport(
        {
            "database": CheckResult("healthy", 1.0),
            "disk": CheckResult("unhealthy", 500.0, reason="timeout"),
            "queue": CheckResult("warning", 2.0, {"depth": 7.0}),  # type: ignore[dict-item]
        },
        ("database",),
        datetime.now(UTC),
        {"disk": ("free_percent",), "queue": ("depth",)},  # type: ignore[dict-item]
    )
    assert report.as_json()["services"] == {
        "database": "healthy",
        "disk": {"free_percent": None, "status": "unhealthy"},
        "queue": {"depth": 7.0, "status": "warning"},
    }
