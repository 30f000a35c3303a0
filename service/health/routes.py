"""Health endpoints for load balancers and orchestrators. No session, no rate limit, no store."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel
from quart import Blueprint, Response, jsonify
from quart_schema import document_response, tag_blueprint

from service.health.checks import HealthMonitor
from service.observability.context import HEALTH_PATH


class HealthBody(BaseModel):
    """The health report: each check's status, duration and values; `reason` when it failed."""

    status: Literal["healthy", "degraded"]
    timestamp: str
    services: dict[str, Any]
    checks: dict[str, dict[str, Any]]


class Liveness(BaseModel):
    status: Literal["alive"]


class Readiness(BaseModel):
    """`reasons`: each failing critical check's reason code, or `service: draining`."""

    status: Literal["ready", "not_ready"]
    timestamp: str | None = None
    reasons: dict[str, str] | None = None


def create_blueprint(monitor: HealthMonitor) -> Blueprint:
    blueprint = Blueprint("health", __name__, url_prefix=HEALTH_PATH)
    tag_blueprint(blueprint, ["health"])

    @blueprint.get("")
    @document_response(HealthBody, 200)
    @document_response(HealthBody, 503)
    async def health() -> Response:
        """The health report.

        Each check's status, duration and values: 200 when every critical check is healthy, 503
        (degraded) otherwise."""
        return _json(*await report_answer(monitor))

    @blueprint.get("/live")
    @document_response(Liveness, 200)
    async def live() -> Response:
        """Liveness.

        200 while the process serves; touches no dependency."""
        return _json(*await live_answer(monitor))

    @blueprint.get("/ready")
    @document_response(Readiness, 200)
    @document_response(Readiness, 503)
    async def ready() -> Response:
        """Readiness, for a load balancer.

        200 only when every critical check passes and the worker is not stopping; else 503 with
        each failing check's reason."""
        return _json(*await ready_answer(monitor))

    return blueprint


# Each probe's answer, as a status and a JSON body: given here by the routes above and, before
# Quart, by the probe edge (service/health/probes.py), which serves them in production.
Answer = tuple[int, dict[str, object]]


async def report_answer(monitor: HealthMonitor) -> Answer:
    report = await monitor.report()
    return 200 if report.ready else 503, report.as_json()


async def live_answer(monitor: HealthMonitor) -> Answer:
    return 200, {"status": "alive"}


async def ready_answer(monitor: HealthMonitor) -> Answer:
    if monitor.draining:
        # Stopping: the load balancer should send no more, though requests are still served.
        return 503, {"status": "not_ready", "reasons": {"service": "draining"}}
    report = await monitor.report()
    body: dict[str, object] = {
        "status": "ready" if report.ready else "not_ready",
        "timestamp": report.as_json()["timestamp"],
    }
    if not report.ready:
        body["reasons"] = report.failing()
    return 200 if report.ready else 503, body


ANSWERS: dict[str, Callable[[HealthMonitor], Awaitable[Answer]]] = {
    HEALTH_PATH: report_answer,
    f"{HEALTH_PATH}/live": live_answer,
    f"{HEALTH_PATH}/ready": ready_answer,
}
NO_STORE = {"Cache-Control": "no-store"}


def _json(status: int, body: dict[str, object]) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers.update(NO_STORE)
    return response
