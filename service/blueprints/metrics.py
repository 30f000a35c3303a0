"""`GET /metrics`: the Prometheus exposition, optionally behind a bearer token."""

from __future__ import annotations

import asyncio
import hmac

from quart import Blueprint, Response, current_app, request

from service.errors import APIError
from service.observability import exposition
from service.observability.context import METRICS_PATH
from service.observability.metrics import Metrics
from service.observability.multiprocess import get_worker_snapshots
from service.settings import Settings


def create_blueprint(settings: Settings, collected: Metrics) -> Blueprint:
    blueprint = Blueprint("metrics", __name__)

    @blueprint.get(METRICS_PATH)
    async def metrics() -> Response:
        if settings.metrics_token is not None:
            _require_token(settings.metrics_token.get_secret_value())
        await collected.refresh_scrape_time_values()
        families = collected.snapshot()
        sharing = get_worker_snapshots(current_app)
        if sharing is not None:  # several hypercorn workers: report all of them
            families = await sharing.collect(families)
        # Formatting is CPU work proportional to the series count: keep it off the event loop.
        body = await asyncio.to_thread(exposition.render, families)
        return Response(
            body, content_type=exposition.CONTENT_TYPE, headers={"Cache-Control": "no-store"}
        )

    return blueprint


def _require_token(expected: str) -> None:
    supplied = request.headers.get("Authorization", "")
    scheme, _, token = supplied.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        raise APIError(
            401,
            "unauthorized",
            "A valid bearer token is required for /metrics.",
            {"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
