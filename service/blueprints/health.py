"""Health endpoints for load balancers and orchestrators. No session, no rate limit, no store."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from quart import Blueprint, Response, jsonify
from quart_schema import document_response

from service.health import get_health
from service.observability.context import HEALTH_PATH

blueprint = Blueprint("health", __name__, url_prefix=HEALTH_PATH)

_NO_STORE = {"Cache-Control": "no-store"}


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


@blueprint.get("")
@document_response(HealthBody, 200)
@document_response(HealthBody, 503)
async def health() -> Response:
    """The full report: 200 when every critical check is healthy, 503 (degraded) otherwise."""
    report = await get_health().report()
    return _json(report.as_json(), 200 if report.ready else 503)


@blueprint.get("/live")
@document_response(Liveness, 200)
async def live() -> Response:
    """Liveness: touches no dependency; answers while the process serves."""
    return _json({"status": "alive"}, 200)


@blueprint.get("/ready")
@document_response(Readiness, 200)
@document_response(Readiness, 503)
async def ready() -> Response:
    """Readiness: 200 only when every critical check passes and the worker is not stopping."""
    monitor = get_health()
    if monitor.draining:
        # Stopping: the load balancer should send no more, though requests are still served.
        return _json({"status": "not_ready", "reasons": {"service": "draining"}}, 503)
    report = await monitor.report()
    body: dict[str, object] = {
        "status": "ready" if report.ready else "not_ready",
        "timestamp": report.as_json()["timestamp"],
    }
    if not report.ready:
        body["reasons"] = report.failing()
    return _json(body, 200 if report.ready else 503)


def _json(body: dict[str, object], status: int) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers.update(_NO_STORE)
    return response
